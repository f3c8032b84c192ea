/**
 * One NBD connection's handshake against the protocol, message by message (in memory, a strict
 * client): client flags, option magic and size limits, LIST, INFO, GO, EXPORT_NAME, ABORT, meta
 * contexts, transmission flags.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  BASE_ALLOCATION,
  Cmd,
  Info,
  NbdErr,
  Opt,
  Rep,
  TxFlag,
  packInfoRequest,
  packMetaContextRequest,
  packOption,
  readU64,
} from '../../src/nbd/protocol.js';
import { NbdClient } from '../support/nbd-client.js';
import { closedSoon, lastType, MiB, rig } from '../support/nbd-rig.js';

test('greeting then refusal of unknown or non-fixed client flags', async () => {
  const r = rig();
  for (const flags of [0x7, 0x0, 0x2, 0x80000001]) {
    const c = await NbdClient.open(r.stream());
    assert.is(c.handshakeFlags, 3);
    c.sendClientFlags(flags);
    await closedSoon(c, `close on client flags ${flags}`);
  }
  assert.is(r.server.connectionCount(), 0);
  await r.server.close();
});

test('bad option magic and oversized option data close the connection', async () => {
  const r = rig();
  const c1 = await r.open();
  const bad = packOption(Opt.LIST);
  bad[3] ^= 0xff;
  c1.sendRaw(bad);
  await closedSoon(c1);
  const c2 = await r.open();
  const big = Buffer.alloc(16);
  packOption(Opt.GO).copy(big);
  big.writeUInt32BE(64 * 1024 + 1, 12);
  c2.sendRaw(big);
  await closedSoon(c2);
  assert.ok(r.logs.some((l) => l.includes('exceeds')));
  await r.server.close();
});

test('unknown options get ERR_UNSUP and negotiation continues; STARTTLS and EXTENDED_HEADERS unsupported', async () => {
  const r = rig();
  const c = await r.open();
  for (const code of [4, 5, 11, 12, 999, 0xffffffff]) {
    const rep = await c.option(code, Buffer.from('junk'));
    assert.is(rep.length, 1);
    assert.is(rep[0]!.type, Rep.ERR_UNSUP);
  }
  const list = await c.option(Opt.LIST);
  assert.is(lastType(list), Rep.ACK);
  c.destroy();
  await r.server.close();
});

test('LIST: one SERVER reply per export with description, then ACK; data is invalid', async () => {
  const r = rig();
  const c = await r.open();
  const rep = await c.option(Opt.LIST);
  assert.is(rep.length, 3);
  const names = rep.slice(0, 2).map((x) => {
    assert.is(x.type, Rep.SERVER);
    const len = x.data.readUInt32BE(0);
    return [x.data.toString('utf8', 4, 4 + len), x.data.toString('utf8', 4 + len)];
  });
  assert.equal(names, [['disk', 'a test disk'], ['ro', '']]);
  assert.is(lastType(rep), Rep.ACK);
  assert.is(lastType(await c.option(Opt.LIST, Buffer.from('x'))), Rep.ERR_INVALID);
  assert.is(lastType(await c.option(Opt.STRUCTURED_REPLY, Buffer.from('x'))), Rep.ERR_INVALID);
  c.destroy();
  await r.server.close();
});

test('INFO: export, name, description, block size; stays in negotiation; GO enters transmission', async () => {
  const r = rig([], { maxPayload: 4 * MiB });
  const c = await r.open();
  assert.is(lastType(await c.option(Opt.STRUCTURED_REPLY)), Rep.ACK);
  c.structured = true;
  const rep = await c.option(Opt.INFO, packInfoRequest('disk', [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE, 77, Info.NAME]));
  assert.is(lastType(rep), Rep.ACK);
  const infos = new Map(rep.filter((x) => x.type === Rep.INFO).map((x) => [x.data.readUInt16BE(0), x.data.subarray(2)]));
  assert.is(rep.filter((x) => x.type === Rep.INFO).length, 4);
  assert.is(readU64(infos.get(Info.EXPORT)!, 0), 16 * MiB);
  assert.is(infos.get(Info.EXPORT)!.readUInt16BE(8), 0x0ded);
  assert.is(infos.get(Info.NAME)!.toString(), 'disk');
  assert.is(infos.get(Info.DESCRIPTION)!.toString(), 'a test disk');
  const bs = infos.get(Info.BLOCK_SIZE)!;
  assert.equal([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)], [1, 4096, 4 * MiB]);
  assert.is(r.server.connectionCount('disk'), 0);
  await c.go('disk', []);
  assert.is(c.size, 16 * MiB);
  assert.is(c.transmissionFlags, 0x0ded);
  assert.is(r.server.connectionCount('disk'), 1);
  assert.is(r.provider.users('disk'), 1);
  await c.disconnect();
  await r.server.close();
  assert.is(r.provider.users('disk'), 0);
});

test('GO: unknown export ERR_UNKNOWN, malformed data ERR_INVALID, "" decided by the provider', async () => {
  const r = rig();
  const c = await r.open();
  assert.is(lastType(await c.option(Opt.GO, packInfoRequest('nope', []))), Rep.ERR_UNKNOWN);
  assert.is(lastType(await c.option(Opt.GO, packInfoRequest('', []))), Rep.ERR_UNKNOWN);
  const bad = packInfoRequest('disk', [1]);
  assert.is(lastType(await c.option(Opt.GO, bad.subarray(0, bad.length - 1))), Rep.ERR_INVALID);
  assert.is(lastType(await c.option(Opt.GO, Buffer.alloc(3))), Rep.ERR_INVALID);
  assert.is(lastType(await c.option(Opt.INFO, Buffer.from('\xff\xff\xff\xff\0\0', 'latin1'))), Rep.ERR_INVALID);
  assert.is(lastType(await c.option(Opt.GO, packInfoRequest('x'.repeat(5000), []))), Rep.ERR_INVALID);
  c.destroy();
  const r2 = rig([], { defaultExport: 'disk' });
  const c2 = await NbdClient.open(r2.stream());
  c2.sendClientFlags(3);
  const rep = await c2.option(Opt.INFO, packInfoRequest('', [Info.NAME]));
  assert.is(lastType(rep), Rep.ACK);
  assert.ok(rep.some((x) => x.type === Rep.INFO && x.data.readUInt16BE(0) === Info.NAME && x.data.toString('utf8', 2) === 'disk'));
  c2.destroy();
  await r.server.close();
  await r2.server.close();
});

test('transmission flags: with and without structured replies, read-only', async () => {
  const r = rig();
  const a = await r.connect({ structuredReplies: false });
  assert.is(a.transmissionFlags, 0x0d6d);
  const b = await r.connect({ exportName: 'ro' });
  assert.is(b.transmissionFlags, 0x0587);
  assert.ok(b.transmissionFlags & TxFlag.READ_ONLY);
  await a.disconnect();
  await b.disconnect();
  await r.server.close();
});

test('LIST_META_CONTEXT and SET_META_CONTEXT', async () => {
  const r = rig();
  const c = await r.open();
  assert.is(lastType(await c.option(Opt.SET_META_CONTEXT, packMetaContextRequest('disk', [BASE_ALLOCATION]))), Rep.ERR_INVALID);
  await c.option(Opt.STRUCTURED_REPLY);
  c.structured = true;
  const ctx = (rep: { type: number; data: Buffer }[]) => rep.filter((x) => x.type === Rep.META_CONTEXT).map((x) => [x.data.readUInt32BE(0), x.data.toString('utf8', 4)]);
  assert.equal(ctx(await c.option(Opt.LIST_META_CONTEXT, packMetaContextRequest('disk', []))), [[0, BASE_ALLOCATION]]);
  assert.equal(ctx(await c.option(Opt.LIST_META_CONTEXT, packMetaContextRequest('disk', ['base:']))), [[0, BASE_ALLOCATION]]);
  assert.equal(ctx(await c.option(Opt.LIST_META_CONTEXT, packMetaContextRequest('disk', ['x-foo:bar', 'qemu:dirty-bitmap:a']))), []);
  assert.is(lastType(await c.option(Opt.LIST_META_CONTEXT, packMetaContextRequest('nope', []))), Rep.ERR_UNKNOWN);
  assert.is(lastType(await c.option(Opt.LIST_META_CONTEXT, Buffer.alloc(9))), Rep.ERR_INVALID);
  assert.equal(ctx(await c.option(Opt.SET_META_CONTEXT, packMetaContextRequest('disk', ['base:']))), []);
  assert.equal(ctx(await c.option(Opt.SET_META_CONTEXT, packMetaContextRequest('disk', []))), []);
  const set = await c.setMetaContext('disk', ['x-foo:bar', BASE_ALLOCATION]);
  assert.equal(ctx(set), [[1, BASE_ALLOCATION]]);
  assert.is(lastType(set), Rep.ACK);
  await c.go('disk', []);
  assert.equal(await c.blockStatus(0, 4096), [[4096, 3]]);
  await c.disconnect();

  const d = await r.open();
  await d.option(Opt.STRUCTURED_REPLY);
  d.structured = true;
  await d.setMetaContext('ro', [BASE_ALLOCATION]);
  await d.go('disk', []);
  const reply = await d.request(Cmd.BLOCK_STATUS, 0, 0, 4096);
  assert.is(reply.error, NbdErr.EINVAL, 'context chosen for another export does not apply');
  await d.disconnect();
  await r.server.close();
});

test('EXPORT_NAME: with and without NO_ZEROES; unknown export closes', async () => {
  const r = rig();
  const a = await r.connect({ exportNameOption: true, clientFlags: 1, structuredReplies: false });
  assert.is(a.size, 16 * MiB);
  await a.write(0, Buffer.alloc(512, 7));
  assert.equal(await a.read(0, 512), Buffer.alloc(512, 7));
  await a.disconnect();
  const b = await r.connect({ exportNameOption: true });
  assert.is(b.transmissionFlags, 0x0ded);
  assert.equal(await b.blockStatus(0, 8192), [[4096, 0], [4096, 3]]);
  await b.disconnect();
  const c = await r.open();
  c.sendRaw(packOption(Opt.EXPORT_NAME, Buffer.from('nope')));
  await closedSoon(c);
  await r.server.close();
});

test('ABORT is acknowledged, then the server closes', async () => {
  const r = rig();
  const c = await r.open();
  const rep = await c.option(Opt.ABORT, Buffer.from('ignored'));
  assert.is(lastType(rep), Rep.ACK);
  await closedSoon(c);
  const d = await r.open();
  d.sendRaw(packOption(Opt.ABORT));
  d.destroy();
  await new Promise((res) => setTimeout(res, 50));
  assert.is(r.server.connectionCount(), 0);
  assert.equal(r.logs, []);
  await r.server.close();
});

test.run();
