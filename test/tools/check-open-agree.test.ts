/**
 * `pool check` and opening the pool agree: a metadata file truncated just past its last used
 * block checks clean with a warning and opens (grown back, with a notice; every byte still
 * reads); a truncation that cuts a block in use is damage for the check and refused by the open.
 * thin_check 0.9 and 1.x agree with the check both times.
 *
 * Regression: the check passed the first file (exit 0, "1 warning") while every other command
 * refused to open it (exit 6).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliOk } from '../support/cli.js';
import { haveTools, run, tool09, tool1x } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const BLOCK = 4096;

/** Index of the last 4 KiB block of `path` holding a nonzero byte. */
function lastUsedBlock(path: string): number {
  const d = readFileSync(path);
  for (let b = Math.floor(d.length / BLOCK) - 1; b >= 0; b--) {
    for (let i = b * BLOCK; i < (b + 1) * BLOCK; i++) if (d[i]) return b;
  }
  return -1;
}

async function poolWithData(): Promise<{ dir: string; content: Buffer }> {
  const dir = join(tempDir('thinpool-agree-'), 'pool');
  await cliOk(['pool', 'create', '--data-size', '64M', '--metadata-size', '1M'], { pool: dir });
  await cliOk(['device', 'create', 'a', '--size', '8M'], { pool: dir });
  const content = Buffer.alloc(2 * 1024 * 1024);
  for (let i = 0; i < content.length; i += 512) content.writeUInt32LE(i * 2654435761 >>> 0, i);
  await cliOk(['device', 'write', 'a', '--offset', '0', '-'], { pool: dir, input: content });
  return { dir, content };
}

async function thinChecks(path: string): Promise<number[]> {
  const out: number[] = [];
  for (const exe of [tool09('thin_check'), tool1x('thin_check')]) if (exe) out.push((await run(exe, [path])).code);
  return out;
}

test('truncated just past the last used block: check ok with a warning, and the pool opens with everything readable', async () => {
  const { dir, content } = await poolWithData();
  const meta = join(dir, 'metadata');
  const last = lastUsedBlock(meta);
  truncateSync(meta, (last + 1) * BLOCK);
  const check = await cli(['pool', 'check'], { pool: dir });
  assert.is(check.code, 0, check.stderr + check.stdout);
  assert.match(check.stdout, /warning \[metadata-size\]/);
  if (haveTools('thin_check')) assert.ok((await thinChecks(meta)).every((c) => c === 0), 'thin_check passes it too');
  // Every command opens it (grown back, with a note), and the data is all there.
  const ls = await cli(['device', 'ls'], { pool: dir });
  assert.is(ls.code, 0, ls.stderr);
  assert.match(ls.stderr, /note: the metadata file held \d+ blocks, fewer than its space map's 256; it was grown back/);
  assert.is(statSync(meta).size, 1024 * 1024);
  const back = await cli(['device', 'read', 'a', '--offset', '0', '--length', String(content.length)], { pool: dir });
  assert.is(back.code, 0, back.stderr);
  assert.ok(back.stdoutBytes.equals(content), 'content intact');
  const again = await cli(['pool', 'check'], { pool: dir });
  assert.is(again.code, 0);
  assert.match(again.stdout, /ok: 0 damage, 0 leak\(s\), 0 warning\(s\)/, again.stdout);
  if (haveTools('thin_check')) assert.ok((await thinChecks(meta)).every((c) => c === 0));
});

test('truncated through a block in use: check finds damage (exit 1) and the open refuses it (exit 6)', async () => {
  const { dir } = await poolWithData();
  const meta = join(dir, 'metadata');
  const last = lastUsedBlock(meta);
  truncateSync(meta, last * BLOCK);
  const check = await cli(['pool', 'check'], { pool: dir });
  assert.is(check.code, 1, check.stdout + check.stderr);
  assert.match(check.stdout, /damage/);
  if (haveTools('thin_check')) assert.ok((await thinChecks(meta)).every((c) => c !== 0), 'thin_check fails it too');
  const ls = await cli(['device', 'ls'], { pool: dir });
  assert.is(ls.code, 6, ls.stderr);
});

test.run();
