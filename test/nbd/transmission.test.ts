/**
 * One NBD connection's transmission phase against the protocol (in memory, a strict client): the
 * error table for malformed requests, read-only exports, structured and simple reads, block
 * status, write flags, export errors, cookies, DISC, half-close, the handshake timeout, exports
 * with invalid sizes.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { NbdExport, ReadSegment } from '../../src/nbd/export.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import {
  Chunk,
  Cmd,
  CmdFlag,
  NbdErr,
  Opt,
  Rep,
  packInfoRequest,
  packOption,
  packRequestHeader,
} from '../../src/nbd/protocol.js';
import { withTimeout } from '../support/nbd-client.js';
import { closedSoon, lastType, MiB, rig } from '../support/nbd-rig.js';

test('malformed requests get the errors of the table and the connection stays usable', async () => {
  const r = rig([], { maxPayload: MiB });
  for (const structured of [true, false]) {
    const c = await r.connect({ structuredReplies: structured });
    const size = c.size;
    const err = async (type: number, flags: number, offset: number, length: number, payload?: Buffer) =>
      (await c.request(type, flags, offset, length, payload)).error;
    assert.is(await err(Cmd.READ, 0, size - 512, 1024), NbdErr.EINVAL, 'read past end');
    assert.is(await err(Cmd.TRIM, 0, size, 1), NbdErr.EINVAL, 'trim past end');
    assert.is(await err(Cmd.CACHE, 0, size, 512), NbdErr.EINVAL, 'cache past end');
    assert.is(await err(Cmd.WRITE, 0, size - 512, 1024, Buffer.alloc(1024, 1)), NbdErr.ENOSPC, 'write past end, payload drained');
    assert.is(await err(Cmd.WRITE_ZEROES, 0, size - 512, 1024), NbdErr.ENOSPC, 'zero past end');
    assert.is(await err(Cmd.READ, 0, 2 ** 53 - 1, 512), NbdErr.EINVAL, 'offset near 2^53');
    const h = packRequestHeader(Cmd.READ, 0, 0, 99, 0, 512);
    h.writeUInt32BE(0xffffffff, 16);
    h.writeUInt32BE(0xffffff00, 20);
    assert.is((await c.requestWithHeader(h)).error, NbdErr.EINVAL, 'offset near 2^64');
    assert.is(await err(42, 0, 0, 512), NbdErr.EINVAL, 'unknown command');
    assert.is(await err(Cmd.RESIZE, 0, 0, 0), NbdErr.EINVAL, 'resize');
    assert.is(await err(Cmd.READ, 0x8000, 0, 512), NbdErr.EINVAL, 'unknown flag');
    assert.is(await err(Cmd.WRITE, CmdFlag.NO_HOLE, 0, 512, Buffer.alloc(512)), NbdErr.EINVAL, 'inapplicable flag on write');
    assert.is(await err(Cmd.TRIM, CmdFlag.DF, 0, 512), NbdErr.EINVAL, 'inapplicable flag on trim');
    assert.is(await err(Cmd.READ, 0, 0, MiB + 1), NbdErr.EINVAL, 'read over max payload');
    assert.is(await err(Cmd.WRITE, 0, 0, MiB + 512, Buffer.alloc(MiB + 512, 9)), NbdErr.EINVAL, 'write over max payload, drained');
    assert.is(await err(Cmd.BLOCK_STATUS, 0, 0, 512), structured ? 0 : NbdErr.EINVAL);
    if (structured) assert.is(await err(Cmd.BLOCK_STATUS, 0, 0, 0), NbdErr.EINVAL, 'zero-length block status');
    if (!structured) assert.is(await err(Cmd.READ, CmdFlag.DF, 0, 512), NbdErr.EINVAL, 'DF without structured replies');
    assert.is(await err(Cmd.READ, 0, 0, 0), 0, 'zero-length read');
    assert.is(await err(Cmd.WRITE, 0, 0, 0), 0, 'zero-length write');
    assert.is(await err(Cmd.TRIM, 0, 0, 0), 0, 'zero-length trim');
    assert.is(await err(Cmd.FLUSH, 0, 4096, 512), 0, 'flush with offset');
    assert.is(await err(Cmd.CACHE, 0, 0, 4096), 0, 'cache');
    assert.is(await err(Cmd.READ, CmdFlag.FUA, 0, 512), 0, 'FUA on read is harmless');
    assert.equal(await c.read(size - 512, 512), Buffer.alloc(512), 'untouched by the rejected writes');
    assert.equal(await c.read(0, 512), Buffer.alloc(512));
    await c.disconnect();
  }
  assert.is(r.disk.stats.writes, 0);
  await r.server.close();
});

test('read-only export: write, trim, write-zeroes get EPERM; write payload drained', async () => {
  const r = rig();
  const c = await r.connect({ exportName: 'ro' });
  assert.is((await c.request(Cmd.WRITE, 0, 0, 4096, Buffer.alloc(4096, 1))).error, NbdErr.EPERM);
  assert.is((await c.request(Cmd.TRIM, 0, 0, 4096)).error, NbdErr.EPERM);
  assert.is((await c.request(Cmd.WRITE_ZEROES, 0, 0, 4096)).error, NbdErr.EPERM);
  assert.equal(await c.read(0, 4096), Buffer.alloc(4096));
  await c.flush();
  await c.disconnect();
  await r.server.close();
});

test('structured READ: holes as OFFSET_HOLE, data as OFFSET_DATA, DF gives one chunk; simple READ fills zeros', async () => {
  const r = rig();
  const c = await r.connect();
  const data = Buffer.alloc(8192, 0x5a);
  await c.write(8192, data);
  const reply = await c.request(Cmd.READ, 0, 0, 32768);
  assert.equal(reply.chunks.map((x) => [x.type, x.offset, x.length]), [
    [Chunk.OFFSET_HOLE, 0, 8192],
    [Chunk.OFFSET_DATA, 8192, 8192],
    [Chunk.OFFSET_HOLE, 16384, 16384],
  ]);
  assert.equal(reply.chunks.map((x) => x.flags), [0, 0, 1]);
  const expect = Buffer.concat([Buffer.alloc(8192), data, Buffer.alloc(16384)]);
  assert.equal(reply.data, expect);
  const df = await c.request(Cmd.READ, CmdFlag.DF, 0, 32768);
  assert.equal(df.chunks.map((x) => [x.type, x.offset, x.length, x.flags]), [[Chunk.OFFSET_DATA, 0, 32768, 1]]);
  assert.equal(df.data, expect);
  const hole = await c.request(Cmd.READ, CmdFlag.DF, 65536, 4096);
  assert.equal(hole.chunks.map((x) => [x.type, x.offset, x.length]), [[Chunk.OFFSET_HOLE, 65536, 4096]]);
  const empty = await c.request(Cmd.READ, 0, 100, 0);
  assert.equal(empty.chunks.map((x) => x.type), [Chunk.NONE]);
  const odd = await c.read(8191, 3);
  assert.equal([...odd], [0, 0x5a, 0x5a]);
  await c.disconnect();
  const s = await r.connect({ structuredReplies: false });
  const simple = await s.request(Cmd.READ, 0, 0, 32768);
  assert.is(simple.structured, false);
  assert.equal(simple.data, expect);
  await s.disconnect();
  await r.server.close();
});

test('BLOCK_STATUS: flags, REQ_ONE, never past the requested length', async () => {
  const r = rig();
  const c = await r.connect();
  await c.write(4096, Buffer.alloc(4096, 1));
  await c.writeZeroes(8192, 4096, CmdFlag.NO_HOLE);
  await c.write(1 * MiB, Buffer.alloc(512, 2));
  assert.equal(await c.blockStatus(0, 2 * MiB), [[4096, 3], [4096, 0], [4096, 2], [MiB - 12288, 3], [4096, 0], [MiB - 4096, 3]]);
  assert.equal(await c.blockStatus(0, 2 * MiB, CmdFlag.REQ_ONE), [[4096, 3]]);
  assert.equal(await c.blockStatus(4096, 100, CmdFlag.REQ_ONE), [[100, 0]]);
  assert.equal(await c.blockStatus(1000, 6000), [[3096, 3], [2904, 0]]);
  assert.equal(await c.blockStatus(16384, 1000), [[1000, 3]]);
  const all = await c.blockStatus(0, c.size);
  assert.is(all.reduce((s, [l]) => s + l, 0), c.size);
  assert.is((await c.request(Cmd.BLOCK_STATUS, 0, c.size - 512, 1024)).error, NbdErr.EINVAL);
  assert.is((await c.request(Cmd.BLOCK_STATUS, CmdFlag.DF, 0, 512)).error, NbdErr.EINVAL);
  await c.trim(4096, 4096);
  await c.writeZeroes(MiB, 4096);
  assert.equal(await c.blockStatus(0, 2 * MiB), [[8192, 3], [4096, 2], [2 * MiB - 12288, 3]]);
  await c.disconnect();
  const n = await r.connect({ metaContext: false });
  assert.is((await n.request(Cmd.BLOCK_STATUS, 0, 0, 512)).error, NbdErr.EINVAL);
  await n.disconnect();
  await r.server.close();
});

test('write flags reach the export: FUA, NO_HOLE, FAST_ZERO (ENOTSUP when slow)', async () => {
  const slow = new MemoryExport({ name: 'slow', size: MiB, slowZero: true });
  const r = rig([slow]);
  const c = await r.connect();
  await c.write(0, Buffer.alloc(4096, 1), CmdFlag.FUA);
  await c.write(4096, Buffer.alloc(4096, 1));
  assert.is(r.disk.stats.fuaWrites, 1);
  assert.is(r.disk.stats.writes, 2);
  await c.writeZeroes(0, 4096, CmdFlag.FAST_ZERO | CmdFlag.FUA);
  await c.disconnect();
  const s = await r.connect({ exportName: 'slow' });
  await s.write(0, Buffer.alloc(4096, 1));
  assert.is((await s.request(Cmd.WRITE_ZEROES, CmdFlag.FAST_ZERO, 0, 4096)).error, NbdErr.ENOTSUP);
  assert.equal(await s.read(0, 4096), Buffer.alloc(4096, 1), 'failed fast zero changed nothing');
  await s.writeZeroes(0, 4096);
  assert.equal(await s.read(0, 4096), Buffer.alloc(4096));
  await s.disconnect();
  await r.server.close();
});

test('errors thrown by the export map to NBD errors; malformed export results become EIO', async () => {
  const mem = new MemoryExport({ name: 'bad', size: MiB });
  const fail = (code: string | undefined, msg: string) => {
    const e = code === 'RANGE' ? new RangeError(msg) : new Error(msg);
    if (code && code !== 'RANGE') Object.assign(e, { code });
    return Promise.reject(e);
  };
  const bad: NbdExport = {
    name: 'bad',
    size: MiB,
    readOnly: false,
    read: (o, l) => {
      if (o === 0) return fail(undefined, 'disk on fire');
      if (o === 512) return Promise.resolve([{ offset: o, length: l - 1, data: null }]);
      if (o === 1024) return Promise.resolve([{ offset: o, length: l, data: Array.from({ length: l }, () => 1) as unknown as Uint8Array }]);
      if (o === 2048) return Promise.resolve([null as unknown as ReadSegment]);
      return mem.read(o, l);
    },
    write: () => fail('ENOSPC', 'pool full'),
    flush: () => fail('EIO', 'sync failed'),
    trim: () => fail('RANGE', 'bad range'),
    writeZeroes: () => fail('EROFS', 'needs check'),
    blockStatus: () => Promise.resolve([]),
    cache: (o) => {
      if (o === 0) throw new Error('sync throw');
      return Promise.reject(Object.create(null));
    },
  };
  const r = rig([bad]);
  const c = await r.connect({ exportName: 'bad' });
  const e = async (type: number, offset: number, length: number, payload?: Buffer) => {
    const rep = await c.request(type, 0, offset, length, payload);
    return [rep.error, rep.message.length > 0];
  };
  assert.equal(await e(Cmd.READ, 0, 512), [NbdErr.EIO, true]);
  assert.equal(await e(Cmd.READ, 512, 512), [NbdErr.EIO, true]);
  assert.equal(await e(Cmd.WRITE, 0, 512, Buffer.alloc(512)), [NbdErr.ENOSPC, true]);
  assert.equal(await e(Cmd.FLUSH, 0, 0), [NbdErr.EIO, true]);
  assert.equal(await e(Cmd.TRIM, 0, 512), [NbdErr.EINVAL, true]);
  assert.equal(await e(Cmd.WRITE_ZEROES, 0, 512), [NbdErr.EPERM, true]);
  assert.equal(await e(Cmd.BLOCK_STATUS, 0, 512), [NbdErr.EIO, true]);
  assert.equal(await e(Cmd.CACHE, 0, 512), [NbdErr.EIO, true]);
  assert.equal(await e(Cmd.CACHE, 512, 512), [NbdErr.EIO, true]);
  assert.equal(await e(Cmd.READ, 1024, 512), [NbdErr.EIO, true]);
  assert.equal(await e(Cmd.READ, 2048, 512), [NbdErr.EIO, true]);
  assert.equal(await c.read(4096, 512), Buffer.alloc(512));
  await c.disconnect();
  const s = await r.connect({ exportName: 'bad', structuredReplies: false });
  assert.is((await s.request(Cmd.READ, 0, 0, 512)).error, NbdErr.EIO);
  assert.is((await s.request(Cmd.WRITE, 0, 0, 512, Buffer.alloc(512))).error, NbdErr.ENOSPC);
  await s.disconnect();
  assert.ok(r.logs.some((l) => l.includes('disk on fire')));
  assert.not.ok(r.logs.some((l) => l.includes('pool full')), 'ENOSPC is a result, not a failure to log');
  assert.not.ok(r.logs.some((l) => l.includes('internal error')));
  await r.server.close();
});

test('cookies are 8 opaque bytes: 64-bit values echoed, reuse after the reply', async () => {
  const r = rig();
  const c = await r.connect();
  const cookies: [number, number][] = [[0xffffffff, 0xffffffff], [0x563e, 0xabd07f90], [0x80000000, 0], [0, 0]];
  const replies = await Promise.all(cookies.map((k, i) => c.request(Cmd.WRITE, 0, i * 4096, 4096, Buffer.alloc(4096, i + 1), k)));
  assert.ok(replies.every((x) => x.error === 0));
  for (let i = 0; i < 50; i++) {
    await c.request(Cmd.WRITE, 0, 65536, 512, Buffer.alloc(512, i), [0x563e, 0xabd07f90]);
    const rd = await c.request(Cmd.READ, 0, 65536, 512, undefined, [0x563e, 0xabd07f90]);
    assert.equal(rd.data, Buffer.alloc(512, i));
  }
  await c.disconnect();
  await r.server.close();
});

test('bad request magic, truncated header or payload, and vanishing clients close without crashing', async () => {
  const r = rig();
  const a = await r.connect();
  const h = packRequestHeader(Cmd.READ, 0, 0, 1, 0, 512);
  h.writeUInt32BE(0x12345678, 0);
  a.sendRaw(h);
  await closedSoon(a);
  const b = await r.connect();
  b.sendRaw(packRequestHeader(Cmd.READ, 0, 0, 1, 0, 512).subarray(0, 13));
  b.stream.end();
  await closedSoon(b);
  const c = await r.connect();
  c.sendRaw(packRequestHeader(Cmd.WRITE, 0, 0, 1, 0, 65536));
  c.sendRaw(Buffer.alloc(1000));
  c.stream.end();
  await closedSoon(c);
  const d = await r.connect();
  const pending = d.request(Cmd.READ, 0, 0, 4096);
  d.destroy();
  await pending.catch(() => {});
  const e = await r.open();
  e.sendRaw(packOption(Opt.GO).subarray(0, 10));
  e.stream.end();
  await closedSoon(e);
  await new Promise((res) => setTimeout(res, 20));
  assert.is(r.server.connectionCount(), 0);
  assert.is(r.disk.stats.writes, 0, 'a truncated write never reaches the export');
  await r.server.close();
});

test('DISC: in-flight requests are answered before the server closes', async () => {
  const r = rig();
  const c = await r.connect();
  const reqs = [c.request(Cmd.WRITE, 0, 0, 65536, Buffer.alloc(65536, 3)), c.request(Cmd.READ, 0, 0, 4096), c.request(Cmd.FLUSH, 0, 0, 0)];
  c.sendRaw(packRequestHeader(Cmd.DISC, 0, 0, 0, 0, 0));
  c.sendRaw(packRequestHeader(Cmd.WRITE, 0, 0, 77, 0, 4));
  const out = await Promise.all(reqs);
  assert.ok(out.every((x) => x.error === 0));
  await closedSoon(c);
  assert.is(r.disk.stats.writes, 1, 'nothing after DISC is processed');
  await r.server.close();
});

test('client half-close after requests still gets the replies', async () => {
  const r = rig();
  const c = await r.connect();
  const reqs = [c.request(Cmd.WRITE, 0, 0, 4096, Buffer.alloc(4096, 1)), c.request(Cmd.READ, 0, 8192, 4096)];
  c.stream.end();
  const out = await Promise.all(reqs);
  assert.ok(out.every((x) => x.error === 0));
  await closedSoon(c);
  await r.server.close();
});

test('a client that does not finish the handshake in time is dropped; transmission has no time limit', async () => {
  const r = rig([], { handshakeTimeoutMs: 500 });
  const slow = await r.open();
  await slow.option(Opt.LIST);
  const fast = await r.connect();
  await withTimeout(slow.closed, 1000, 'slow handshake dropped');
  assert.ok(r.logs.some((l) => l.includes('handshake not finished')));
  await new Promise((res) => setTimeout(res, 600));
  assert.equal(await fast.read(0, 512), Buffer.alloc(512));
  await fast.disconnect();
  await r.server.close();
});

test('an export with an invalid size is refused instead of crashing the connection', async () => {
  const broken = { ...new MemoryExport({ name: 'broken', size: 4096 }), name: 'broken', size: -1 } as unknown as NbdExport;
  const r = rig([broken]);
  const c = await r.open();
  assert.is(lastType(await c.option(Opt.GO, packInfoRequest('broken', []))), Rep.ERR_UNKNOWN);
  assert.is(lastType(await c.option(Opt.LIST)), Rep.ACK);
  c.destroy();
  assert.not.ok(r.logs.some((l) => l.includes('internal error')));
  await r.server.close();
});

test.run();
