/**
 * One owner per pool's files: the lock file is readable by its owner only; the metadata and data
 * files themselves are locked by the process that has the pool open, so no second thinpool
 * process (or pool object) opens them through any directory that links them.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pool } from '../../src/pool/pool.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;

test('POOL/lock is 0600, also when an older version left it 0644 (regression: it was 0644)', async () => {
  const dir = join(tempDir('thinpool-own-'), 'pool');
  const pool = await Pool.create({ dir, dataSize: 64 * MiB });
  assert.is(statSync(join(dir, 'lock')).mode & 0o777, 0o600);
  await pool.close();
  chmodSync(join(dir, 'lock'), 0o644);
  const again = await Pool.open(dir);
  assert.is(statSync(join(dir, 'lock')).mode & 0o777, 0o600);
  await again.close();
  // A lock file made before the pool (e.g. by a check) is tightened too.
  const other = join(tempDir('thinpool-own-'), 'pool');
  const { mkdirSync } = await import('node:fs');
  mkdirSync(other);
  writeFileSync(join(other, 'lock'), '', { mode: 0o644 });
  const p = await Pool.create({ dir: other, dataSize: 64 * MiB });
  assert.is(statSync(join(other, 'lock')).mode & 0o777, 0o600);
  await p.close();
});

test.run();
