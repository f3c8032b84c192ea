/**
 * The commands against a pool that `thinpool serve` owns: they reach the daemon through
 * connectPool (control socket) and behave as with a pool they open themselves — create, write,
 * read, import/export (identical), ls, status (exports, served by), check, dump, delta, the same
 * error lines and exit codes — while `pool restore` and `pool create` refuse the served pool.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliJson, cliOk } from '../support/cli.js';
import { cliHasServe, startDaemon, type DaemonHandle } from '../support/daemon.js';
import { testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const root = tempDir('thinpool-cli-served-');
const pool = join(root, 'pool');
const have = cliHasServe();

testIf(test, have, 'the CLI has no serve command')('every command works through the daemon, with the same errors', async () => {
  await cliOk(['pool', 'create', '--data-size', '512M'], { pool });
  let d: DaemonHandle | undefined;
  try {
    d = await startDaemon({ dir: pool, via: 'cli' });
    const made = await cliJson<{ id: number }>(['device', 'create', 'web', '--size', '64M'], { pool });
    assert.is(made.id, 1);
    const bytes = randomBytes(200_000);
    await cliOk(['device', 'write', 'web', '--offset', '4097'], { pool, input: bytes });
    const r = await cli(['device', 'read', 'web', '--offset', '4097', '--length', '200000'], { pool });
    assert.ok(r.stdoutBytes.equals(bytes));
    await cliOk(['device', 'snapshot', 'web', 'snap'], { pool });
    await cliOk(['device', 'write', 'snap', '--offset', '0'], { pool, input: 'x' });

    const img = join(root, 'img');
    const fd = openSync(img, 'w');
    ftruncateSync(fd, 100 * MiB);
    writeSync(fd, randomBytes(MiB + 5), 0, MiB + 5, 33 * MiB + 7);
    closeSync(fd);
    await cliOk(['device', 'import', 'img', img], { pool });
    const out = join(root, 'out');
    await cliOk(['device', 'export', 'img', out], { pool });
    assert.ok(readFileSync(out).equals(readFileSync(img)), 'export through the daemon is identical');

    const ls = await cliJson<Array<{ name: string; exclusiveBlocks: number }>>(['device', 'ls'], { pool });
    assert.equal(ls.map((x) => [x.name, x.exclusiveBlocks]), [['web', 1], ['snap', 1], ['img', 17]]);
    const s = await cliJson<{ servedBy?: number; exports?: unknown[]; mode: string }>(['pool', 'status'], { pool });
    assert.is(s.servedBy, d.pid);
    assert.ok(Array.isArray(s.exports));
    assert.match(await cliOk(['pool', 'status'], { pool }), new RegExp(`^served by: +pid ${d.pid}$`, 'm'));
    const chk = await cli(['pool', 'check', '--json'], { pool });
    assert.is(chk.code, 0, chk.stderr);
    assert.is((JSON.parse(chk.stdout) as { ok: boolean }).ok, true);
    assert.match(await cliOk(['pool', 'dump'], { pool }), /^<superblock [^>]*>\n  <device dev_id="1"/);
    const delta = await cliJson<{ ranges: unknown[] }>(['device', 'delta', 'web', 'snap'], { pool });
    assert.equal(delta.ranges, [{ kind: 'different', offset: 0, length: 65536 }]);

    let e = await cli(['device', 'snapshot', 'nope', 'x'], { pool });
    assert.is(e.code, 3);
    assert.is(e.stderr, 'thinpool: cannot snapshot nope: no device named nope\n');
    e = await cli(['device', 'create', 'web', '--size', '1M'], { pool });
    assert.is(e.code, 2);
    assert.is(e.stderr, 'thinpool: cannot create device web: a device named web exists\n');
    e = await cli(['pool', 'restore', '--force', '-i', '/dev/null'], { pool });
    assert.is(e.code, 5, e.stderr);
    assert.match(e.stderr, new RegExp(`^thinpool: cannot open ${pool}: locked by pid ${d.pid} `));
    e = await cli(['pool', 'create'], { pool });
    assert.is(e.code, 2);
    assert.is(d.alive(), true);
  } finally {
    await d?.stop();
  }
  // after the daemon: the same pool opens here, with everything committed
  const ls = await cliJson<Array<{ name: string }>>(['device', 'ls'], { pool });
  assert.equal(ls.map((x) => x.name), ['web', 'snap', 'img']);
  const s = await cliJson<{ servedBy?: number }>(['pool', 'status'], { pool });
  assert.is(s.servedBy, undefined);
});

test.run();
