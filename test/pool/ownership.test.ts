/**
 * One owner per pool's files, whatever directory links them: the lock file is readable by its
 * owner only; the metadata and data files are flocked by the process that has the pool open, so
 * no second thinpool process (or second open in one process) gets them through a symlink, a hard
 * link or `pool adopt`, and the refusal names the other pool; the files of a closed pool
 * directory go to another one only with `pool adopt --force`, after which the old directory
 * refuses to open them; a stale owner mark (its directory gone) does not stand in the way.
 *
 * Regression: `pool adopt --metadata A/metadata --data A/data` into B was accepted while A was a
 * live pool; A's daemon and B then handed out the same device ids and overwrote each other's
 * devices.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, existsSync, linkSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BusyError } from '../../src/errors.js';
import { hasNativeAddon } from '../../src/io/native.js';
import { Pool } from '../../src/pool/pool.js';
import { cli, cliOk } from '../support/cli.js';
import { cliHasServe, makePool, startDaemon } from '../support/daemon.js';
import { testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const locking = testIf(test, hasNativeAddon(), 'the native addon (flock) is not built');
const served = testIf(test, hasNativeAddon() && cliHasServe(), 'the native addon or the CLI serve command is missing');

async function refusal(p: Promise<unknown>): Promise<Error> {
  const r = await p.then((x) => x, (e: unknown) => e);
  if (!(r instanceof Error)) {
    if (r instanceof Pool) await r.close();
    throw new Error('expected a refusal');
  }
  return r;
}

test('POOL/lock is 0600, also when an older version left it 0644 (regression: it was 0644)', async () => {
  const dir = join(tempDir('thinpool-own-'), 'pool');
  const pool = await Pool.create({ dir, dataSize: 64 * MiB });
  assert.is(statSync(join(dir, 'lock')).mode & 0o777, 0o600);
  await pool.close();
  chmodSync(join(dir, 'lock'), 0o644);
  const again = await Pool.open(dir);
  assert.is(statSync(join(dir, 'lock')).mode & 0o777, 0o600);
  await again.close();
  const other = join(tempDir('thinpool-own-'), 'pool');
  mkdirSync(other);
  writeFileSync(join(other, 'lock'), '', { mode: 0o644 });
  const p = await Pool.create({ dir: other, dataSize: 64 * MiB });
  assert.is(statSync(join(other, 'lock')).mode & 0o777, 0o600);
  await p.close();
});

served('pool adopt of a live pool\'s files is refused (exit 5) naming the pool and its pid; B is left empty', async () => {
  const a = await makePool({ devices: [{ name: 'web', size: 16 * MiB }] });
  const d = await startDaemon({ dir: a });
  try {
    const b = join(tempDir('thinpool-own-'), 'b');
    const r = await cli(['pool', 'adopt', '--metadata', join(a, 'metadata'), '--data', join(a, 'data')], { pool: b });
    assert.is(r.code, 5, r.stderr + r.stdout);
    assert.match(r.stderr, new RegExp(`in use by pool ${a}, pid ${d.pid}`));
    assert.ok(!existsSync(join(b, 'metadata')) && !existsSync(join(b, 'data')), 'nothing linked into B');
    const forced = await cli(['pool', 'adopt', '--force', '--metadata', join(a, 'metadata'), '--data', join(a, 'data')], { pool: b });
    assert.is(forced.code, 5, `--force never takes a live pool's files: ${forced.stderr}`);
    // A is untouched and still serves.
    const c = await d.client({ exportName: 'web' });
    await c.write(0, Buffer.alloc(4096, 1));
    await c.disconnect();
  } finally {
    await d.stop();
  }
});

locking('two opens of the same files through a symlinked and a hard-linked directory: the second is refused naming the first', async () => {
  const a = await makePool({ devices: [{ name: 'x', size: MiB }] });
  const sym = join(tempDir('thinpool-own-'), 'sym');
  mkdirSync(sym);
  symlinkSync(join(a, 'metadata'), join(sym, 'metadata'));
  symlinkSync(join(a, 'data'), join(sym, 'data'));
  const hard = join(tempDir('thinpool-own-'), 'hard');
  mkdirSync(hard);
  linkSync(join(a, 'metadata'), join(hard, 'metadata'));
  linkSync(join(a, 'data'), join(hard, 'data'));
  const pa = await Pool.open(a);
  try {
    for (const other of [sym, hard]) {
      const e = await refusal(Pool.open(other));
      assert.instance(e, BusyError);
      assert.is((e as BusyError).code, 'ELOCKED');
      assert.match(e.message, new RegExp(`^Cannot open pool ${other}: its metadata file .* is in use by pool ${a}`));
    }
    // pool check through the other directory does not read the live files either.
    const chk = await cli(['pool', 'check'], { pool: sym });
    assert.is(chk.code, 5, chk.stderr);
    assert.match(chk.stderr, /in use by pool/);
  } finally {
    await pa.close();
  }
  // Closed: the other directories still do not own A's files (they belong to A).
  for (const other of [sym, hard]) {
    const e = await refusal(Pool.open(other));
    assert.match(e.message, new RegExp(`its metadata file belongs to pool ${a}`));
  }
});

locking('a closed pool\'s files: adopt without --force refused naming the pool, with --force moved (the old directory then refuses them)', async () => {
  const a = await makePool({ devices: [{ name: 'web', size: 16 * MiB }] });
  const b = join(tempDir('thinpool-own-'), 'b');
  const r = await cli(['pool', 'adopt', '--metadata', join(a, 'metadata'), '--data', join(a, 'data')], { pool: b });
  assert.is(r.code, 5, r.stderr);
  assert.match(r.stderr, new RegExp(`it is the metadata file of pool ${a} \\(closed now\\).*give --force`));
  assert.equal(existsSync(b) ? readdirSync(b).filter((f) => f === 'metadata' || f === 'data') : [], []);
  const forced = await cli(['pool', 'adopt', '--force', '--metadata', join(a, 'metadata'), '--data', join(a, 'data')], { pool: b });
  assert.is(forced.code, 0, forced.stderr);
  assert.match(forced.stdout, /found id:1/);
  await cliOk(['device', 'rename', 'id:1', 'web'], { pool: b });
  await cliOk(['device', 'create', 'new', '--size', '1M'], { pool: b });
  const old = await cli(['device', 'ls'], { pool: a });
  assert.is(old.code, 5, old.stderr);
  assert.match(old.stderr, new RegExp(`its metadata file belongs to pool ${b}, which links the same file`));
  const ls = await cli(['device', 'ls', '--json'], { pool: b });
  assert.equal((JSON.parse(ls.stdout) as Array<{ name: string }>).map((x) => x.name), ['web', 'new']);
});

locking('a stale owner mark (its pool directory gone or moved) does not block a new owner', async () => {
  const outside = tempDir('thinpool-own-');
  const a = await makePool({ devices: [{ name: 'x', size: MiB }] });
  // Files that live outside any pool directory, adopted into b, then b removed.
  renameSync(join(a, 'metadata'), join(outside, 'metadata'));
  renameSync(join(a, 'data'), join(outside, 'data'));
  rmSync(a, { recursive: true });
  const b = join(tempDir('thinpool-own-'), 'b');
  await cliOk(['pool', 'adopt', '--metadata', join(outside, 'metadata'), '--data', join(outside, 'data')], { pool: b });
  const c = join(tempDir('thinpool-own-'), 'c');
  const refused = await cli(['pool', 'adopt', '--metadata', join(outside, 'metadata'), '--data', join(outside, 'data')], { pool: c });
  assert.is(refused.code, 5, `b still links them: ${refused.stderr}`);
  assert.match(refused.stderr, new RegExp(`of pool ${b}`));
  rmSync(b, { recursive: true });
  const ok = await cli(['pool', 'adopt', '--metadata', join(outside, 'metadata'), '--data', join(outside, 'data')], { pool: c });
  assert.is(ok.code, 0, `b is gone: its mark is stale (${ok.stderr})`);
});

test.run();
