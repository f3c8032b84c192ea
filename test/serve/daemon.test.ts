/**
 * The daemon's behaviour as users meet it: connections per export in `pool status`, exported
 * devices that cannot be removed, the default export, read-only exports, other commands through
 * the control socket while serving, out of data space, remove vs attach. Each daemon is a real
 * child process (the CLI's `serve` when it has one). Its sockets: daemon-sockets.test.ts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BusyError } from '../../src/errors.js';
import { Cmd, CmdFlag, NbdErr, Opt, Rep, TxFlag } from '../../src/nbd/protocol.js';
import { RemotePoolService } from '../../src/serve/remote-pool-service.js';
import { Pool } from '../../src/pool/pool.js';
import { NbdClient, NbdRequestError, dialUnix } from '../support/nbd-client.js';
import { haveTools, run, testIf } from '../support/oracles.js';
import { cli } from '../support/cli.js';
import { type DaemonHandle, cliHasServe, daemonRefuses, exportsOf, makePool, pattern, startDaemon, until } from '../support/daemon.js';

const K = 1024;
const M = 1024 * K;
const cliTest = testIf(test, cliHasServe(), 'the CLI has no serve command yet');

/** GO on `name`; resolves with the error reply type when refused, 0 when accepted (then disconnects). */
async function goReply(d: DaemonHandle, name: string): Promise<number> {
  try {
    const c = await d.client({ exportName: name });
    await c.disconnect();
    return 0;
  } catch (err) {
    const t = (err as { replyType?: number }).replyType;
    if (t === undefined) throw err;
    return t;
  }
}

async function refusal<T>(p: Promise<T>): Promise<unknown> {
  return p.then(
    () => assert.unreachable('expected a refusal'),
    (e: unknown) => e,
  );
}

test('pool status shows each export\'s connections; an exported device cannot be removed until its clients leave', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }, { name: 'b', size: 16 * M }] });
  const d = await startDaemon({ dir });
  try {
    assert.equal(await exportsOf(d), [], 'no exports before any client');
    const c1 = await d.client({ exportName: 'a' });
    const c2 = await d.client({ exportName: 'a', exportNameOption: true });
    const c3 = await d.client({ exportName: 'id:2' }); // b by id
    assert.equal(await exportsOf(d), [
      { name: 'a', connections: 2, readOnly: false },
      { name: 'b', connections: 1, readOnly: false },
    ]);
    const svc = await d.service();
    try {
      const e = await refusal(svc.remove('a'));
      assert.ok(e instanceof BusyError && e.code === 'EBUSY', `remove of an exported device: ${String(e)}`);
      assert.match((e as Error).message, /in use|export/);
      await c1.write(0, Buffer.alloc(4096, 1));
      await c1.disconnect();
      await until(async () => (await exportsOf(d)).find((x) => x.name === 'a')?.connections === 1, 5000, 'a has one connection left');
      assert.instance(await refusal(svc.remove('a')), BusyError, 'still busy with one client');
      c2.destroy(); // a client vanishing also releases the export
      await until(async () => !(await exportsOf(d)).some((x) => x.name === 'a'), 5000, 'a has no connection');
      await svc.remove('a');
      assert.equal((await svc.devices()).map((x) => x.name), ['b']);
      assert.is(await goReply(d, 'a'), Rep.ERR_UNKNOWN, 'the removed device is no export any more');
      assert.instance(await refusal(svc.remove('b')), BusyError);
      await c3.write(4096, Buffer.alloc(512, 3));
      assert.ok((await c3.read(4096, 512)).equals(Buffer.alloc(512, 3)), 'the other export is unaffected');
      await c3.disconnect();
      await until(async () => (await exportsOf(d)).length === 0, 5000, 'no exports');
      await svc.remove('b');
      assert.equal(await svc.devices(), []);
    } finally {
      await svc.close();
    }
    assert.ok(d.alive());
  } finally {
    await d.stop();
  }
});

cliTest('thinpool pool status (text and --json) and device rm through the CLI while served', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }, { name: 'b', size: 16 * M }] });
  const d = await startDaemon({ dir, readOnly: ['b'] });
  try {
    const c1 = await d.client({ exportName: 'a' });
    const c2 = await d.client({ exportName: 'a' });
    const c3 = await d.client({ exportName: 'b' });
    const js = await cli(['-p', dir, 'pool', 'status', '--json']);
    assert.is(js.code, 0, js.stderr);
    const st = JSON.parse(js.stdout) as { exports: Array<{ name: string; connections: number; readOnly: boolean }>; servedBy: number };
    assert.is(st.servedBy, d.pid);
    assert.equal(st.exports.slice().sort((x, y) => x.name.localeCompare(y.name)), [
      { name: 'a', connections: 2, readOnly: false },
      { name: 'b', connections: 1, readOnly: true },
    ]);
    const text = await cli(['-p', dir, 'pool', 'status']);
    assert.is(text.code, 0, text.stderr);
    assert.match(text.stdout, /a \(2 connections\)/);
    assert.match(text.stdout, /b \(1 connection, read-only\)/);
    assert.match(text.stdout, String(d.pid));
    const rm = await cli(['-p', dir, 'device', 'rm', 'a']);
    assert.is(rm.code, 5, `device rm of an exported device exits 5 (busy): ${rm.stderr}`);
    assert.match(rm.stderr, /^thinpool: cannot/);
    await c1.disconnect();
    await c2.disconnect();
    await until(async () => !(await exportsOf(d)).some((x) => x.name === 'a'), 5000, 'a released');
    const rm2 = await cli(['-p', dir, 'device', 'rm', 'a']);
    assert.is(rm2.code, 0, rm2.stderr);
    await c3.disconnect();
    assert.ok(d.alive());
  } finally {
    await d.stop();
  }
});

test('the default export "" is refused unless --default DEV; --default of a missing device refuses to start', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * M }, { name: 'b', size: 8 * M }] });
  let d = await startDaemon({ dir });
  try {
    assert.is(await goReply(d, ''), Rep.ERR_UNKNOWN, 'GO "" without --default');
    const old = await NbdClient.open(await dialUnix(d.sock));
    old.sendClientFlags(3);
    await refusal(old.exportName('')); // EXPORT_NAME "" cannot be answered with an error: the server closes
    if (haveTools('nbdinfo')) {
      const r = await run('nbdinfo', ['--size', d.uri('')]);
      assert.ok(r.code !== 0, `nbdinfo on "": ${r.stdout}`);
    }
    await d.stop();
    d = await startDaemon({ dir, defaultDevice: 'b' });
    const c = await d.client({ exportName: '' });
    assert.is(c.size, 8 * M, 'the default export is b');
    await c.write(M, pattern(4096, 1));
    const named = await d.client({ exportName: 'b' });
    assert.ok((await named.read(M, 4096)).equals(pattern(4096, 1)), 'written through "" and read through b');
    assert.equal(await exportsOf(d), [{ name: 'b', connections: 2, readOnly: false }], '"" counts as b');
    assert.is((await c.request(Cmd.WRITE, 0, 8 * M, 512, Buffer.alloc(512))).error, NbdErr.ENOSPC, 'the range is b\'s');
    await c.disconnect();
    await named.disconnect();
    if (haveTools('nbdinfo')) {
      const r = await run('nbdinfo', ['--size', d.uri('')]);
      assert.is(r.stdout.trim(), String(8 * M));
    }
    await d.stop();
    const bad = await daemonRefuses({ dir, defaultDevice: 'nope' });
    assert.ok(bad.exit.code !== 0, 'exit status');
    assert.match(bad.stderr, /nope/);
    if (bad.via === 'cli') assert.is(bad.exit.code, 3, `not found: ${bad.stderr}`);
    const p = await Pool.open(dir); // a refused start leaves the pool unlocked
    await p.close();
  } finally {
    if (d.alive()) await d.stop();
  }
});

test('read-only exports (--read-only, and devices read-only in the catalog) refuse writes with EPERM and advertise READ_ONLY', async () => {
  const dir = await makePool({ devices: [{ name: 'rw', size: 16 * M }, { name: 'ro', size: 16 * M }, { name: 'layer', size: 4 * M, readOnly: true }] });
  const pool = await Pool.open(dir);
  await pool.volume('ro').write(0, pattern(128 * K, 7));
  await pool.close();
  const d = await startDaemon({ dir, readOnly: ['ro'] });
  try {
    for (const name of ['ro', 'layer']) {
      const c = await d.client({ exportName: name });
      const f = c.transmissionFlags;
      assert.ok(f & TxFlag.READ_ONLY, `${name}: READ_ONLY advertised (flags 0x${f.toString(16)})`);
      assert.not.ok(f & (TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FUA), `${name}: no write-side flags (0x${f.toString(16)})`);
      for (const [what, p] of [
        ['write', () => c.write(0, Buffer.alloc(4096, 9))],
        ['write FUA', () => c.write(64 * K, Buffer.alloc(512, 9), 1)],
        ['trim', () => c.trim(0, 64 * K)],
        ['write-zeroes', () => c.writeZeroes(0, 64 * K)],
      ] as const) {
        const e = await refusal(p());
        assert.ok(e instanceof NbdRequestError && e.errno === NbdErr.EPERM, `${name} ${what}: ${String(e)}`);
      }
      await c.flush(); // allowed on a read-only export, and harmless
      if (name === 'ro') assert.ok((await c.read(0, 128 * K)).equals(pattern(128 * K, 7)), 'the data is intact and readable');
      else assert.ok((await c.read(0, 4 * M)).every((b) => b === 0));
      await c.disconnect();
    }
    const rw = await d.client({ exportName: 'rw' });
    assert.not.ok(rw.transmissionFlags & TxFlag.READ_ONLY);
    await rw.write(0, Buffer.alloc(4096, 1), 1);
    const c = await d.client({ exportName: 'ro' });
    assert.equal(await exportsOf(d), [
      { name: 'ro', connections: 1, readOnly: true },
      { name: 'rw', connections: 1, readOnly: false },
    ]);
    await c.disconnect();
    await rw.disconnect();
    if (haveTools('nbdinfo')) {
      assert.is((await run('nbdinfo', ['--can', 'read-only', d.uri('ro')])).code, 0);
      assert.is((await run('nbdinfo', ['--can', 'write', d.uri('ro')])).code, 2);
      assert.is((await run('nbdinfo', ['--can', 'write', d.uri('rw')])).code, 0);
    }
    if (haveTools('qemu-io')) {
      const w = await run('qemu-io', ['-f', 'raw', d.uri('ro'), '-c', 'write -P 1 0 4k']);
      assert.ok(w.code !== 0 || /denied|read-only|not permitted|failed/i.test(w.stdout + w.stderr), w.stdout + w.stderr);
      const r = await run('qemu-io', ['-f', 'raw', '-r', d.uri('ro'), '-c', 'read -P 0 128k 64k']);
      assert.is(r.code, 0, r.stdout + r.stderr);
    }
    const svc = await d.service();
    try {
      assert.ok((await svc.read('ro', 0, 128 * K)).equals(pattern(128 * K, 7)), 'nothing reached the device');
      assert.is((await svc.device('ro')).mappedBlocks, 2);
      assert.is((await svc.device('layer')).mappedBlocks, 0);
    } finally {
      await svc.close();
    }
    assert.ok(d.alive());
  } finally {
    await d.stop();
  }
  const bad = await daemonRefuses({ dir, readOnly: ['rw', 'missing'] });
  assert.ok(bad.exit.code !== 0);
  assert.match(bad.stderr, /missing/);
});

test('other commands through the control socket while served: visible to NBD clients at once, and NBD writes visible to them', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 32 * M }] });
  const d = await startDaemon({ dir });
  const svc = await d.service();
  try {
    const c = await d.client({ exportName: 'a' });
    // create: served at once
    await svc.createDevice('fresh', 8 * M);
    const f = await d.client({ exportName: 'fresh' });
    assert.is(f.size, 8 * M);
    // control write -> NBD read, NBD write -> control read, no flush in between
    await svc.write('fresh', 4096, pattern(10_000, 1));
    assert.ok((await f.read(4096, 10_000)).equals(pattern(10_000, 1)));
    await f.write(M + 17, pattern(70_000, 2));
    assert.ok((await svc.read('fresh', M + 17, 70_000)).equals(pattern(70_000, 2)));
    // snapshot while a client writes: the snapshot holds the state at that moment
    await c.write(0, pattern(128 * K, 3));
    const before = await c.read(0, 256 * K);
    const writing = (async () => {
      for (let i = 0; i < 20; i++) await c.write(512 * K + i * 4096, pattern(4096, 100 + i));
    })();
    await svc.snapshot('a', 'a-snap');
    await writing;
    await c.write(0, pattern(64 * K, 4)); // copy-on-write of a shared block
    const s = await d.client({ exportName: 'a-snap' });
    assert.ok((await s.read(0, 256 * K)).equals(before), 'the snapshot keeps the data from before the snapshot');
    assert.ok((await c.read(0, 64 * K)).equals(pattern(64 * K, 4)), 'the origin has the new data');
    assert.ok((await c.read(64 * K, 64 * K)).equals(pattern(128 * K, 3).subarray(64 * K)));
    const listing = await svc.device('a-snap');
    assert.is(listing.origin, 'a');
    // discard through the control socket: the NBD client reads zeros and sees a hole
    await svc.discard('a', 0, 64 * K);
    assert.ok((await c.read(0, 64 * K)).every((b) => b === 0));
    const bs = await c.blockStatus(0, 64 * K);
    assert.equal(bs[0], [64 * K, 3], 'hole,zero after the discard');
    // resize: new connections see the new size, the old one keeps working inside the old one
    await svc.resize('fresh', 16 * M);
    const f2 = await d.client({ exportName: 'fresh' });
    assert.is(f2.size, 16 * M);
    await f2.write(12 * M, pattern(4096, 5));
    assert.ok((await f.read(4096, 10_000)).equals(pattern(10_000, 1)));
    // rename: served under the new name at once, the old name is gone
    await svc.rename('fresh', 'renamed');
    assert.is(await goReply(d, 'fresh'), Rep.ERR_UNKNOWN);
    const r = await d.client({ exportName: 'renamed' });
    assert.ok((await r.read(12 * M, 4096)).equals(pattern(4096, 5)));
    assert.ok((await exportsOf(d)).some((x) => x.name === 'renamed' && x.connections === 3), 'connections follow the rename');
    // shrink below what live connections were told: refused while they are connected (NBD cannot
    // tell them), done once they are gone
    const busy = await refusal(svc.resize('renamed', 4 * M));
    assert.ok(busy instanceof BusyError, String(busy));
    assert.ok((await r.read(12 * M, 4096)).equals(pattern(4096, 5)), 'the clients keep their whole device');
    for (const x of [f, f2, r]) await x.disconnect();
    await until(async () => !(await exportsOf(d)).some((x) => x.name === 'renamed'), 5000, 'renamed released');
    await svc.resize('renamed', 4 * M);
    const r2 = await d.client({ exportName: 'renamed' });
    assert.is(r2.size, 4 * M);
    assert.ok((await r2.read(4096, 10_000)).equals(pattern(10_000, 1)), 'inside the new size all is well');
    assert.ok((await svc.extents('renamed', 0, 4 * M)).some((e) => e.mapped));
    for (const x of [c, s, r2]) await x.disconnect();
    assert.ok(d.alive());
  } finally {
    await svc.close();
    await d.stop();
  }
});

test('out of data space: NBD writes fail with ENOSPC and change nothing, the daemon stays up, pool extend through the control socket lets them through', async () => {
  const dir = await makePool({ dataSize: 2 * M, autoExtend: false, devices: [{ name: 'a', size: 16 * M }] });
  const d = await startDaemon({ dir });
  const svc = await d.service();
  try {
    const c = await d.client({ exportName: 'a' });
    const r = await c.request(Cmd.WRITE, 0, 0, 3 * M, pattern(3 * M, 1));
    assert.is(r.error, NbdErr.ENOSPC, 'a write needing more blocks than the pool has');
    let st = await svc.status();
    assert.is(st.mode, 'out-of-data-space');
    assert.is(st.dataBlocks.used, 0, 'the failed write provisioned nothing');
    assert.ok((await c.read(0, 3 * M)).every((b) => b === 0), 'and wrote nothing');
    await c.write(0, pattern(M, 2)); // what fits still fits
    await svc.extend({ dataSize: 32 * M });
    await c.write(0, pattern(3 * M, 1), CmdFlag.FUA);
    assert.ok((await c.read(0, 3 * M)).equals(pattern(3 * M, 1)));
    st = await svc.status();
    assert.is(st.mode, 'rw');
    await c.disconnect();
    assert.ok(d.alive());
  } finally {
    await svc.close();
    await d.stop();
  }
});

// Regression test. This test found (at 1f3bdae): Pool.remove checked "in use" and then waited for
// the pool's gate; an NBD client whose GO arrived while the remove waited (the gate held by
// in-flight I/O or a commit) attached to the device that was then deleted. Its requests failed
// with EIO, and once a new device reused the id (ids were max + 1), the stale connection read and
// wrote that other device.
test('remove vs attach: a device is never removed while a client is attached to it, and a stale connection never reaches a device that reuses its id', async () => {
  const dir = await makePool({ devices: [{ name: 'busy', size: 512 * M }] });
  const d = await startDaemon({ dir });
  const svc = await d.service();
  const svc2 = await RemotePoolService.connect(d.controlSock);
  const busy = await d.client({ exportName: 'busy' });
  try {
    for (let i = 0; i < 40; i++) {
      await svc.createDevice(`x${i}`, 16 * M);
      const c = await NbdClient.open(await dialUnix(d.sock));
      try {
        c.sendClientFlags(3);
        await c.option(Opt.STRUCTURED_REPLY);
        c.structured = true;
        // Keep the gate busy (FUA writes commit), then race a remove against the last handshake step.
        const load = Array.from({ length: 8 }, (_, k) => busy.write(((i * 8 + k) % 500) * M, pattern(M, i), CmdFlag.FUA));
        await new Promise((r) => setTimeout(r, 1));
        const removing = svc2.remove(`x${i}`);
        await new Promise((r) => setTimeout(r, i % 6));
        const [rm, go] = await Promise.allSettled([removing, c.go(`x${i}`)]);
        await Promise.all(load);
        if (rm.status === 'fulfilled' && go.status === 'fulfilled') {
          const victim = await svc.createDevice('victim', 16 * M);
          const w = await c.request(Cmd.WRITE, 0, 0, 4096, pattern(4096, 77));
          const landed = (await svc.read('victim', 0, 4096)).equals(pattern(4096, 77));
          assert.unreachable(
            `iteration ${i}: remove of x${i} succeeded while a GO attached to it; the stale connection's write ${w.error ? `failed with NBD error ${w.error}` : 'succeeded'}` +
              `; device victim (id ${victim.id}, the removed device's id reused) ${landed ? 'RECEIVED the stale write' : 'is untouched'}`,
          );
        }
        if (rm.status === 'rejected') {
          assert.instance(rm.reason, BusyError, 'the remove lost the race: busy');
          assert.is(go.status, 'fulfilled');
          await c.disconnect();
          await until(async () => !(await exportsOf(d)).some((x) => x.name === `x${i}`), 5000, `x${i} released`);
          await svc.remove(`x${i}`);
        } else {
          assert.is(go.status, 'rejected', 'the GO lost the race: unknown export');
        }
      } finally {
        c.destroy();
      }
    }
  } finally {
    await busy.disconnect().catch(() => undefined);
    await svc2.close();
    await svc.close();
    await d.stop();
  }
});

// Regression test. This test found (at 1f3bdae): `--read-only NAME` was looked up by name on every
// connection (PoolExports.forcedReadOnly), not resolved to the device at start. Renaming the device
// made its export writable; a device renamed *to* that name became read-only instead.
test('a --read-only export stays read-only after its device is renamed (and does not pass to a device renamed to its old name)', async () => {
  const dir = await makePool({ devices: [{ name: 'img', size: 16 * M }, { name: 'other', size: 16 * M }] });
  const d = await startDaemon({ dir, readOnly: ['img'] });
  const svc = await d.service();
  try {
    await svc.rename('img', 'img2');
    await svc.rename('other', 'img');
    const c = await d.client({ exportName: 'img2' });
    const e = await c.write(0, Buffer.alloc(512, 1)).then(() => 'written', (x: unknown) => (x instanceof NbdRequestError ? x.errno : String(x)));
    assert.ok(c.transmissionFlags & TxFlag.READ_ONLY, `the renamed read-only device is still exported READ_ONLY (flags 0x${c.transmissionFlags.toString(16)}, write: ${e})`);
    assert.is(e, NbdErr.EPERM);
    await c.disconnect();
    const o = await d.client({ exportName: 'img' });
    assert.not.ok(o.transmissionFlags & TxFlag.READ_ONLY, 'the device that took the old name stays writable');
    await o.disconnect();
  } finally {
    await svc.close();
    await d.stop();
  }
});

// Regression test. This test found (at 1f3bdae): when a --listen failed (port in use), Daemon.start
// closed the pool but not the NBD server whose unix listener was already up: the CLI exited and left
// POOL/nbd.sock behind (in process, the listener itself stayed open on a closed pool).
test.run();
