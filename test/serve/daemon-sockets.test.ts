/**
 * The daemon's sockets as users meet them: TCP on loopback only unless --listen-any, a TCP port
 * it cannot bind (clean exit, nothing left, the pool unlocked), socket modes 0600, --socket
 * elsewhere, one daemon per pool, SIGINT removing the sockets. Each daemon is a real child
 * process (the CLI's `serve` when it has one). Split from daemon.test.ts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, statSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Pool } from '../../src/pool/pool.js';
import { NbdClient } from '../support/nbd-client.js';
import { haveTools, run, testIf } from '../support/oracles.js';
import { cli } from '../support/cli.js';
import { cliHasServe, daemonRefuses, dialTcp, exportsOf, makePool, pattern, startDaemon } from '../support/daemon.js';
import { tempDir } from '../support/tmp.js';

const K = 1024;
const M = 1024 * K;
const cliTest = testIf(test, cliHasServe(), 'the CLI has no serve command yet');


test('TCP: --listen 127.0.0.1:0 serves on a free loopback port; other addresses are refused without --listen-any', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  const d = await startDaemon({ dir, listen: ['127.0.0.1:0'] });
  try {
    assert.is(d.tcpPorts.length, 1);
    const port = d.tcpPorts[0]!;
    assert.ok(port > 0 && port < 65536, `port ${port}`);
    const t = await NbdClient.connect(await dialTcp(port), { exportName: 'a' });
    await t.write(3 * M, pattern(8192, 3), 1);
    const u = await d.client({ exportName: 'a' });
    assert.ok((await u.read(3 * M, 8192)).equals(pattern(8192, 3)), 'TCP write, unix read');
    assert.equal(await exportsOf(d), [{ name: 'a', connections: 2, readOnly: false }]);
    await t.disconnect();
    await u.disconnect();
    if (haveTools('nbdinfo')) {
      const r = await run('nbdinfo', ['--size', d.tcpUri('a')]);
      assert.is(r.code, 0, r.stderr);
      assert.is(r.stdout.trim(), String(16 * M));
    }
  } finally {
    await d.stop();
  }
  for (const listen of [['0.0.0.0:0'], ['192.0.2.1:10809'], ['[::]:0'], ['127.0.0.1:0', '10.1.2.3:0']]) {
    const r = await daemonRefuses({ dir, listen });
    assert.ok(r.exit.code !== 0, `--listen ${listen.join(' ')} refused (exit ${r.exit.code})`);
    assert.match(r.stderr, /loopback|listen-any/, `--listen ${listen.join(' ')}: ${r.stderr}`);
    if (r.via === 'cli') assert.is(r.exit.code, 2, 'a usage error');
  }
  assert.not.ok(existsSync(join(dir, 'nbd.sock')), 'a refused start leaves no socket');
  const p = await Pool.open(dir);
  await p.close();
});

test('a daemon that cannot bind its TCP port exits cleanly: no NBD socket left behind, the pool unlocked', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  const blocker = createServer();
  await new Promise<void>((res) => blocker.listen(0, '127.0.0.1', () => res()));
  const port = (blocker.address() as AddressInfo).port;
  try {
    const r = await daemonRefuses({ dir, listen: [`127.0.0.1:${port}`] });
    assert.ok(r.exit.code !== 0);
    assert.match(r.stderr, /EADDRINUSE|in use/);
    const p = await Pool.open(dir);
    await p.close();
    assert.not.ok(existsSync(join(dir, 'control.sock')), 'no control socket left');
    assert.not.ok(existsSync(join(dir, 'nbd.sock')), 'no NBD socket left');
  } finally {
    await new Promise((res) => blocker.close(res));
  }
});

cliTest('device commands of the CLI reach the daemon while it serves (write, read, ls, create)', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  const work = tempDir('thinpool-serve-cli-');
  const d = await startDaemon({ dir });
  try {
    const c = await d.client({ exportName: 'a' });
    const file = join(work, 'in.bin');
    await writeFile(file, pattern(200_000, 9));
    const w = await cli(['-p', dir, 'device', 'write', 'a', file, '--offset', '1M']);
    assert.is(w.code, 0, w.stderr);
    assert.ok((await c.read(M, 200_000)).equals(pattern(200_000, 9)), 'CLI write seen by the NBD client at once');
    await c.write(5 * M, pattern(3000, 8));
    const r = await cli(['-p', dir, 'device', 'read', 'a', '--offset', String(5 * M), '--length', '3000']);
    assert.is(r.code, 0, r.stderr);
    assert.ok(r.stdoutBytes.equals(pattern(3000, 8)), 'NBD write seen by the CLI read');
    const cr = await cli(['-p', dir, 'device', 'create', 'b', '--size', '4M']);
    assert.is(cr.code, 0, cr.stderr);
    const b = await d.client({ exportName: 'b' });
    assert.is(b.size, 4 * M);
    const ls = await cli(['-p', dir, 'device', 'ls', '--json']);
    assert.is(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, '"b"');
    await b.disconnect();
    await c.disconnect();
  } finally {
    await d.stop();
  }
});

test('sockets are mode 0600, --socket puts the NBD socket elsewhere, a second daemon on the pool is refused, SIGINT stops and removes the sockets', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }] });
  const sock = join(tempDir('thinpool-serve-sock-'), 'custom.sock');
  const d = await startDaemon({ dir, socket: sock });
  try {
    assert.is(d.sock, sock);
    assert.is(statSync(sock).mode & 0o777, 0o600, 'NBD socket mode');
    assert.is(statSync(d.controlSock).mode & 0o777, 0o600, 'control socket mode');
    assert.not.ok(existsSync(join(dir, 'nbd.sock')));
    const second = await daemonRefuses({ dir });
    assert.ok(second.exit.code !== 0);
    assert.match(second.stderr, /lock|busy|in use/i);
    if (second.via === 'cli') assert.is(second.exit.code, 5, 'locked');
    assert.ok(d.alive(), 'the first daemon keeps serving');
    const c = await d.client({ exportName: 'a' });
    await c.write(0, Buffer.alloc(512, 1));
    await c.disconnect();
  } finally {
    const exit = await d.stop('SIGINT');
    assert.is(exit.code, 0, 'SIGINT stops it like SIGTERM');
  }
  assert.not.ok(existsSync(sock), 'NBD socket removed');
  assert.not.ok(existsSync(join(dir, 'control.sock')), 'control socket removed');
});

test.run();
