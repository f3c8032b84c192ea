/**
 * How the NBD server ends: close() lets in-flight requests finish and their replies go out,
 * gives up on a connection stuck in a slow payload after the shutdown timeout, and the
 * listeners replace stale unix sockets, refuse live ones and set the socket mode.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Cmd, NbdErr } from '../../src/nbd/protocol.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { StaticExportProvider } from '../../src/nbd/static-export-provider.js';
import { GatedExport } from '../support/nbd-gated-export.js';
import { startNbd, waitFor } from '../support/nbd-harness.js';
import { NbdClient, dialUnix, withTimeout } from '../support/nbd-client.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;

test('close(): in-flight requests complete and their replies go out before close resolves', async () => {
  const mem = new MemoryExport({ name: 'disk', size: 16 * MiB });
  const gated = new GatedExport(mem);
  const h = await startNbd([gated]);
  const c = await h.client({ exportName: 'disk' });
  const idle = await h.client({ exportName: 'disk' });
  const negotiating = await NbdClient.open(await dialUnix(h.sock));
  gated.hold();
  const inFlight = [
    c.request(Cmd.WRITE, 0, 0, MiB, Buffer.alloc(MiB, 7)),
    c.request(Cmd.READ, 0, 4 * MiB, MiB),
    c.request(Cmd.FLUSH, 0, 0, 0),
  ];
  await waitFor(() => gated.started === 3, 2000, 'requests reached the export');
  let closed = false;
  const closing = h.server.close().then(() => (closed = true));
  await new Promise((r) => setTimeout(r, 100));
  assert.is(closed, false, 'close waits for in-flight requests');
  await withTimeout(negotiating.closed, 1000, 'a connection still negotiating is dropped at once');
  await withTimeout(idle.closed, 1000, 'an idle connection is closed at once');
  const late = await c.request(Cmd.READ, 0, 0, 512);
  assert.is(late.error, NbdErr.ESHUTDOWN, 'requests arriving during shutdown get ESHUTDOWN');
  const lateWrite = await c.request(Cmd.WRITE, 0, 8 * MiB, 4096, Buffer.alloc(4096, 1));
  assert.is(lateWrite.error, NbdErr.ESHUTDOWN);
  const refused = await new Promise<boolean>((resolve) => {
    const s = connect(h.sock);
    s.once('connect', () => {
      s.once('close', () => resolve(true));
    });
    s.once('error', () => resolve(true));
  });
  assert.ok(refused, 'no new connections are served');
  gated.release();
  const replies = await Promise.all(inFlight);
  assert.equal(replies.map((r) => r.error), [0, 0, 0]);
  assert.is(replies[1]!.data!.length, MiB);
  await withTimeout(closing, 2000, 'close resolves after the in-flight work');
  await withTimeout(c.closed, 1000, 'connection closed');
  assert.is(h.server.connectionCount(), 0);
  assert.is(h.provider.users('disk'), 0, 'every attach was released');
  assert.is(mem.stats.writes, 1);
  assert.not.ok(existsSync(h.sock), 'socket file removed');
  await h.server.close();
});

test('close() gives up on a connection stuck in a slow payload after shutdownTimeoutMs', async () => {
  const h = await startNbd([new MemoryExport({ name: 'disk', size: 16 * MiB })], { shutdownTimeoutMs: 200 });
  const c = await h.client({ exportName: 'disk' });
  const pending = c.request(Cmd.WRITE, 0, 0, MiB, undefined).catch((e: Error) => e);
  c.sendRaw(Buffer.alloc(1000));
  await new Promise((r) => setTimeout(r, 20));
  const t0 = Date.now();
  await withTimeout(h.server.close(), 3000, 'close with a stalled client');
  assert.ok(Date.now() - t0 >= 150);
  assert.instance(await pending, Error);
  await withTimeout(c.closed, 1000, 'client closed');
});

test('listenUnix: mode, stale socket replaced, live socket refused; listenTcp port 0', async () => {
  const dir = tempDir('thinpool-nbd-');
  const sock = join(dir, 's.sock');
  const provider = new StaticExportProvider([new MemoryExport({ name: 'disk', size: MiB })]);
  const a = new NbdServer({ provider });
  await a.listenUnix(sock, 0o640);
  const { statSync } = await import('node:fs');
  assert.is(statSync(sock).mode & 0o777, 0o640);
  const b = new NbdServer({ provider });
  try {
    await b.listenUnix(sock);
    assert.unreachable('a live socket must not be taken over');
  } catch (err) {
    assert.is((err as { code?: string }).code, 'EBUSY');
  }
  const port = await a.listenTcp('127.0.0.1', 0);
  assert.ok(port > 0);
  const tcp = await new Promise<import('node:net').Socket>((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
  const c = await NbdClient.connect(tcp, { exportName: 'disk' });
  await c.write(0, Buffer.alloc(512, 3));
  assert.equal(await c.read(0, 512), Buffer.alloc(512, 3));
  await c.disconnect();
  await a.close();
  await a.close();
  assert.not.ok(existsSync(sock));
  const stale = join(dir, 'stale.sock');
  const { spawnSync } = await import('node:child_process');
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.exit(0))`]);
  assert.ok(existsSync(stale), 'a stale socket file is left behind');
  await b.listenUnix(stale);
  const d = await NbdClient.connect(await dialUnix(stale), { exportName: 'disk' });
  await d.disconnect();
  await b.close();
  try {
    await b.listenTcp('127.0.0.1', 0);
    assert.unreachable('listen after close');
  } catch {}
  assert.throws(() => new NbdServer({ provider, maxPayload: 100 }), RangeError);
});

test.run();
