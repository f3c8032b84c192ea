/**
 * The userspace copy-up baseline of the copyup benchmark does what overlay/aufs do: the first
 * write copies the whole file from the highest lower layer that has it into the top layer exactly
 * once (a later change to the lower file no longer shows, a second write copies nothing), the
 * result equals the lower file with the write applied, the lower layers stay untouched, parent
 * directories and the file mode come along, and whiteouts hide lower files.
 */
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CopyUpFs } from '../../bench/copyup-baseline.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';

const seed = testSeed();
const rng = new Rng(seed);
let nth = 0;

function layers(n: number): string[] {
  const base = tempDir('thinpool-copyup-');
  return Array.from({ length: n }, (_, i) => {
    const d = join(base, `layer-${nth++}-${i}`);
    mkdirSync(d, { recursive: true });
    return d;
  });
}

function splice(lower: Uint8Array, offset: number, data: Uint8Array): Buffer {
  const out = Buffer.alloc(Math.max(lower.length, offset + data.length));
  out.set(lower, 0);
  out.set(data, offset);
  return out;
}

test(`the first write copies the whole file once and the copy equals lower + write (seed ${seed})`, async () => {
  const [top, lower] = layers(2) as [string, string];
  const size = 3 * 1024 * 1024 + 123 + rng.int(4096); // more than one copy chunk, not a multiple of it
  const content = Buffer.from(rng.bytes(size));
  mkdirSync(join(lower, 'usr', 'lib'), { recursive: true });
  chmodSync(join(lower, 'usr'), 0o751);
  writeFileSync(join(lower, 'usr', 'lib', 'f.bin'), content, { mode: 0o640 });
  chmodSync(join(lower, 'usr', 'lib', 'f.bin'), 0o640);
  const fs = new CopyUpFs([top, lower]);
  const rel = join('usr', 'lib', 'f.bin');

  const first = Buffer.from(rng.bytes(4096));
  const off1 = Math.floor(size / 2 / 4096) * 4096;
  const w1 = await fs.write(rel, off1, first);
  assert.equal(w1, { foundIn: 1, copiedBytes: size, copiedFiles: 1 });
  assert.equal(fs.counters.copiedFiles, 1);
  assert.equal(fs.counters.copiedBytes, size);
  const expected1 = splice(content, off1, first);
  assert.ok(readFileSync(join(top, rel)).equals(expected1), 'top copy = lower with the write applied');
  assert.ok(readFileSync(join(lower, rel)).equals(content), 'lower layer untouched');
  assert.equal(statSync(join(top, rel)).mode & 0o7777, 0o640, 'file mode copied up');
  assert.equal(statSync(join(top, 'usr')).mode & 0o7777, 0o751, 'parent directory made with the lower mode');

  // The lower file changes afterwards: the top copy must not see it, and a second write copies nothing.
  writeFileSync(join(lower, rel), Buffer.alloc(size, 0xee));
  const second = Buffer.from(rng.bytes(100));
  const w2 = await fs.write(rel, 17, second);
  assert.equal(w2, { foundIn: 0, copiedBytes: 0, copiedFiles: 0 });
  assert.equal(fs.counters.copiedFiles, 1, 'copied exactly once');
  assert.equal(fs.counters.copiedBytes, size);
  assert.ok(readFileSync(join(top, rel)).equals(splice(expected1, 17, second)), 'the second write lands on the first copy');
});

test('a write past the end extends the copy; a durable write fsyncs the copy and the write', async () => {
  const [top, lower] = layers(2) as [string, string];
  const content = Buffer.from(rng.bytes(10_000));
  writeFileSync(join(lower, 'f'), content);
  const fs = new CopyUpFs([top, lower]);
  const data = Buffer.from(rng.bytes(500));
  const w = await fs.write('f', 9_800, data, { durable: true });
  assert.equal(w.copiedBytes, 10_000);
  assert.equal(fs.counters.fsyncs, 2);
  assert.ok(readFileSync(join(top, 'f')).equals(splice(content, 9_800, data)));
});

test('the lookup goes top-down: the highest lower layer wins, whiteouts hide lower copies', async () => {
  const [top, mid, bottom] = layers(3) as [string, string, string];
  writeFileSync(join(bottom, 'a'), 'bottom-a');
  writeFileSync(join(mid, 'a'), 'middle-a');
  writeFileSync(join(bottom, 'b'), 'bottom-b');
  writeFileSync(join(mid, '.wh.b'), '');
  mkdirSync(join(bottom, 'd'));
  writeFileSync(join(bottom, 'd', 'c'), 'bottom-c');
  writeFileSync(join(mid, '.wh.d'), '');
  const fs = new CopyUpFs([top, mid, bottom]);
  assert.is(await fs.lookup('a'), 1);
  assert.is(await fs.lookup('b'), -1);
  assert.is(await fs.lookup(join('d', 'c')), -1);
  assert.is(await fs.lookup('nothing'), -1);
  const w = await fs.write('a', 0, Buffer.from('M'));
  assert.is(w.foundIn, 1);
  assert.is(readFileSync(join(top, 'a'), 'utf8'), 'Middle-a');
  try {
    await fs.write('b', 0, Buffer.from('x'));
    assert.unreachable('a whited-out file must not be written');
  } catch (e) {
    assert.is((e as NodeJS.ErrnoException).code, 'ENOENT');
  }
  assert.is(fs.counters.copiedFiles, 1);
});

test.run();
