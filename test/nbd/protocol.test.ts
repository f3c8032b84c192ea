/**
 * The NBD wire format piece by piece: greeting, client flags, u64 fields, option and reply
 * headers, info payloads, request headers, simple replies and structured chunks, export errors
 * mapped to NBD errors, the receive buffer, and read and block-status replies built from what an
 * export returns.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  Chunk,
  Cmd,
  CmdFlag,
  Info,
  NbdErr,
  Opt,
  REPLY_FLAG_DONE,
  Rep,
  clientFlagsAcceptable,
  packBlockStatusChunk,
  packErrorChunk,
  packExportNameReply,
  packGreeting,
  packInfoBlockSize,
  packInfoExport,
  packInfoRequest,
  packMetaContextRequest,
  packNoneChunk,
  packOption,
  packOptionReply,
  packRequestHeader,
  packServerEntry,
  packSimpleReply,
  parseChunkHeader,
  parseInfoRequest,
  parseMetaContextRequest,
  parseOptionHeader,
  parseOptionReplyHeader,
  parseRequestHeader,
  readU64,
  writeOffsetDataHeader,
  writeOffsetHole,
  writeU64,
} from '../../src/nbd/protocol.js';
import { nbdErrorOf } from '../../src/nbd/nbd-error-of.js';
import { ReceiveBuffer } from '../../src/nbd/receive-buffer.js';
import { MAX_EXTENTS, blockStatusReply, compactSegments, readReply } from '../../src/nbd/replies.js';
import { NoSpaceError, RangeErrorWithCode, ReadOnlyError } from '../../src/errors.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

test('greeting is NBDMAGIC IHAVEOPT 0x0003', () => {
  assert.is(hex(packGreeting()), '4e42444d41474943' + '49484156454f5054' + '0003');
});

test('client flags: FIXED_NEWSTYLE required, NO_ZEROES optional, nothing else', () => {
  assert.ok(clientFlagsAcceptable(1));
  assert.ok(clientFlagsAcceptable(3));
  assert.not.ok(clientFlagsAcceptable(0));
  assert.not.ok(clientFlagsAcceptable(2));
  assert.not.ok(clientFlagsAcceptable(7));
  assert.not.ok(clientFlagsAcceptable(0x80000001));
});

test('u64 round trip, values >= 2^53 read as Infinity', () => {
  const b = Buffer.alloc(8);
  for (const v of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 12345, Number.MAX_SAFE_INTEGER]) {
    writeU64(b, 0, v);
    assert.is(readU64(b, 0), v);
  }
  assert.is(hex((writeU64(b, 0, 2 ** 32 + 5), b)), '0000000100000005');
  b.writeUInt32BE(0x00200000, 0);
  assert.is(readU64(b, 0), Infinity);
  b.writeUInt32BE(0xffffffff, 0);
  assert.is(readU64(b, 0), Infinity);
});

test('option request and reply headers', () => {
  const o = packOption(Opt.GO, Buffer.from([1, 2, 3]));
  assert.is(hex(o), '49484156454f5054' + '00000007' + '00000003' + '010203');
  assert.equal(parseOptionHeader(o), { magicOk: true, option: 7, length: 3 });
  const r = packOptionReply(Opt.LIST, Rep.ERR_UNSUP, Buffer.from('no'));
  assert.is(hex(r), '0003e889045565a9' + '00000003' + '80000001' + '00000002' + '6e6f');
  assert.equal(parseOptionReplyHeader(r), { magicOk: true, option: 3, type: 0x80000001, length: 2 });
  const bad = Buffer.from(o);
  bad[0] ^= 1;
  assert.is(parseOptionHeader(bad).magicOk, false);
});

test('info payloads', () => {
  assert.is(hex(packInfoExport(2 ** 32 + 512, 0x0ded)), '0000' + '0000000100000200' + '0ded');
  assert.is(hex(packInfoBlockSize(1, 4096, 32 * 1024 * 1024)), '0003' + '00000001' + '00001000' + '02000000');
  assert.is(hex(packServerEntry('ab', 'd')), '00000002' + '6162' + '64');
  assert.is(hex(packServerEntry('ab')), '00000002' + '6162');
});

test('export-name reply: 10 bytes with NO_ZEROES, 134 without', () => {
  const short = packExportNameReply(1 << 20, 0x0d6d, true);
  assert.is(hex(short), '0000000000100000' + '0d6d');
  const long = packExportNameReply(1 << 20, 0x0d6d, false);
  assert.is(long.length, 134);
  assert.ok(long.subarray(10).every((x) => x === 0));
});

test('INFO/GO data parse: good, empty name, inconsistent lengths', () => {
  assert.equal(parseInfoRequest(packInfoRequest('disk', [Info.BLOCK_SIZE, Info.NAME])), { name: 'disk', nameBytes: 4, infos: [3, 1] });
  assert.equal(parseInfoRequest(packInfoRequest('', [])), { name: '', nameBytes: 0, infos: [] });
  const d = packInfoRequest('disk', [3]);
  assert.is(parseInfoRequest(d.subarray(0, d.length - 1)), undefined);
  assert.is(parseInfoRequest(Buffer.concat([d, Buffer.from([0])])), undefined);
  const big = Buffer.from(d);
  big.writeUInt32BE(1000, 0);
  assert.is(parseInfoRequest(big), undefined);
  big.writeUInt32BE(0xffffffff, 0);
  assert.is(parseInfoRequest(big), undefined);
  assert.is(parseInfoRequest(Buffer.alloc(5)), undefined);
});

test('meta context data parse: queries, bad lengths, trailing bytes', () => {
  const d = packMetaContextRequest('disk', ['base:allocation', 'x-a:b']);
  assert.equal(parseMetaContextRequest(d), { name: 'disk', nameBytes: 4, queries: ['base:allocation', 'x-a:b'] });
  assert.equal(parseMetaContextRequest(packMetaContextRequest('', [])), { name: '', nameBytes: 0, queries: [] });
  assert.is(parseMetaContextRequest(d.subarray(0, d.length - 1)), undefined);
  assert.is(parseMetaContextRequest(Buffer.concat([d, Buffer.from([0])])), undefined);
  const huge = Buffer.from(d);
  huge.writeUInt32BE(0xffffffff, 8);
  assert.is(parseMetaContextRequest(huge), undefined);
  const count = packMetaContextRequest('x', ['base:']);
  count.writeUInt32BE(0xffffffff, 5);
  assert.is(parseMetaContextRequest(count), undefined);
});

test('request header round trip with 64-bit cookie and offset', () => {
  const h = packRequestHeader(Cmd.WRITE, 0x1, 0x563eabd0, 0x7f90ffff, 2 ** 40 + 4096, 65536);
  assert.is(hex(h), '25609513' + '0001' + '0001' + '563eabd07f90ffff' + '0000010000001000' + '00010000');
  assert.equal(parseRequestHeader(h), { magic: 0x25609513, flags: 1, type: 1, cookieHi: 0x563eabd0, cookieLo: 0x7f90ffff, offset: 2 ** 40 + 4096, length: 65536 });
  const far = Buffer.from(h);
  far.writeUInt32BE(0xffffffff, 16);
  assert.is(parseRequestHeader(far).offset, Infinity);
});

test('simple reply and structured chunks', () => {
  assert.is(hex(packSimpleReply(NbdErr.EINVAL, 0xdeadbeef, 1)), '67446698' + '00000016' + 'deadbeef00000001');
  const none = packNoneChunk(1, 2);
  assert.is(hex(none), '668e33ef' + '0001' + '0000' + '0000000100000002' + '00000000');
  assert.equal(parseChunkHeader(none), { magic: 0x668e33ef, flags: 1, type: 0, cookieHi: 1, cookieLo: 2, length: 0 });
  const err = packErrorChunk(0, 9, NbdErr.ENOSPC, 'full');
  assert.is(hex(err), '668e33ef' + '0001' + '8001' + '0000000000000009' + '0000000a' + '0000001c' + '0004' + hex(Buffer.from('full')));
  const longErr = packErrorChunk(0, 1, 5, 'x'.repeat(5000));
  assert.is(longErr.readUInt16BE(24), 4096);
  const bs = packBlockStatusChunk(0, 3, 1, [4096, 3, 512, 0]);
  assert.is(hex(bs), '668e33ef' + '0001' + '0005' + '0000000000000003' + '00000014' + '00000001' + '00001000' + '00000003' + '00000200' + '00000000');
  const d = Buffer.alloc(28);
  writeOffsetDataHeader(d, 0, 0, 0, 4, 8192, 100);
  assert.is(hex(d), '668e33ef' + '0000' + '0001' + '0000000000000004' + '0000006c' + '0000000000002000');
  const hole = Buffer.alloc(32);
  writeOffsetHole(hole, 0, REPLY_FLAG_DONE, 0, 5, 4096, 8192);
  assert.is(hex(hole), '668e33ef' + '0001' + '0002' + '0000000000000005' + '0000000c' + '0000000000001000' + '00002000');
  assert.is(Chunk.ERROR, 0x8001);
});

test('export errors map to NBD errors as export.ts specifies', () => {
  const withCode = (code: string) => Object.assign(new Error(code), { code });
  assert.is(nbdErrorOf(withCode('ENOSPC')), NbdErr.ENOSPC);
  assert.is(nbdErrorOf(new NoSpaceError('full')), NbdErr.ENOSPC);
  assert.is(nbdErrorOf(new RangeError('x')), NbdErr.EINVAL);
  assert.is(nbdErrorOf(new RangeErrorWithCode('x')), NbdErr.EINVAL);
  assert.is(nbdErrorOf(withCode('EROFS')), NbdErr.EPERM);
  assert.is(nbdErrorOf(withCode('EPERM')), NbdErr.EPERM);
  assert.is(nbdErrorOf(new ReadOnlyError('ro')), NbdErr.EPERM);
  assert.is(nbdErrorOf(new ReadOnlyError('needs check', {}, 'ENEEDSCHECK')), NbdErr.EPERM);
  assert.is(nbdErrorOf(withCode('ENOTSUP')), NbdErr.ENOTSUP);
  assert.is(nbdErrorOf(withCode('EIO')), NbdErr.EIO);
  assert.is(nbdErrorOf(new Error('boom')), NbdErr.EIO);
  assert.is(nbdErrorOf('string'), NbdErr.EIO);
  assert.is(nbdErrorOf(undefined), NbdErr.EIO);
});

test('receive buffer: views inside a chunk, one copy across chunks, skip and copyOut', () => {
  const rb = new ReceiveBuffer();
  const a = Buffer.from([1, 2, 3, 4]);
  rb.push(a);
  rb.push(Buffer.alloc(0));
  rb.push(Buffer.from([5, 6, 7, 8, 9]));
  assert.is(rb.length, 9);
  const v = rb.take(2);
  assert.is(v.buffer, a.buffer);
  assert.equal([...v], [1, 2]);
  assert.equal([...rb.take(4)], [3, 4, 5, 6]);
  assert.is(rb.skip(100), 3);
  assert.is(rb.length, 0);
  rb.push(Buffer.from([1, 2]));
  rb.push(Buffer.from([3]));
  const dest = Buffer.alloc(5);
  assert.is(rb.copyOut(dest, 1, 10), 3);
  assert.equal([...dest], [0, 1, 2, 3, 0]);
  assert.throws(() => rb.take(1), RangeError);
});

test('read replies: simple with zeros, one hole chunk, per-segment chunks, DF as one data chunk', () => {
  const h = parseRequestHeader(packRequestHeader(Cmd.READ, 0, 0, 7, 4096, 3072));
  const segs = compactSegments(
    [
      { offset: 4096, length: 512, data: null },
      { offset: 4608, length: 0, data: null },
      { offset: 4608, length: 512, data: null },
      { offset: 5120, length: 1024, data: Buffer.alloc(1024, 1) },
      { offset: 6144, length: 1024, data: null },
    ],
    4096,
    3072,
  );
  assert.equal(segs.map((x) => [x.offset, x.length, x.data === null]), [[4096, 1024, true], [5120, 1024, false], [6144, 1024, true]]);
  const simple = Buffer.concat(readReply(segs, h, false));
  assert.is(simple.length, 16 + 3072);
  assert.equal(simple.subarray(16), Buffer.concat([Buffer.alloc(1024), Buffer.alloc(1024, 1), Buffer.alloc(1024)]));
  const chunks = Buffer.concat(readReply(segs, h, true));
  assert.is(chunks.length, 32 + 28 + 1024 + 32);
  assert.equal([chunks.readUInt16BE(4), chunks.readUInt16BE(6)], [0, Chunk.OFFSET_HOLE]);
  assert.equal([chunks.readUInt16BE(32 + 4), chunks.readUInt16BE(32 + 6)], [0, Chunk.OFFSET_DATA]);
  assert.equal([chunks.readUInt16BE(32 + 28 + 1024 + 4), chunks.readUInt16BE(32 + 28 + 1024 + 6)], [REPLY_FLAG_DONE, Chunk.OFFSET_HOLE]);
  const df = Buffer.concat(readReply(segs, { ...h, flags: 4 }, true));
  assert.is(df.length, 28 + 3072);
  assert.is(df.readUInt32BE(16), 8 + 3072);
  const hole = Buffer.concat(readReply([{ offset: 4096, length: 3072, data: null }], h, true));
  assert.is(hole.length, 32);
  assert.throws(() => compactSegments([{ offset: 4096, length: 100, data: null }], 4096, 3072), /end at/);
  assert.throws(() => compactSegments([{ offset: 4000, length: 3072, data: null }], 4096, 3072), /malformed/);
  assert.throws(() => compactSegments([{ offset: 4096, length: 3072, data: Buffer.alloc(3) }], 4096, 3072), /malformed/);
});

test('block status replies: clipped, merged, REQ_ONE, capped', () => {
  const h = parseRequestHeader(packRequestHeader(Cmd.BLOCK_STATUS, 0, 0, 1, 0, 10000));
  const ext = (b: Buffer) => Array.from({ length: (b.length - 24) / 8 }, (_, i) => [b.readUInt32BE(24 + 8 * i), b.readUInt32BE(28 + 8 * i)]);
  const e = [
    { length: 4096, hole: true, zero: true },
    { length: 0, hole: false, zero: false },
    { length: 4096, hole: true, zero: true },
    { length: 4096, hole: false, zero: false },
    { length: 1 << 30, hole: false, zero: true },
  ];
  assert.equal(ext(blockStatusReply(e, h)), [[8192, 3], [1808, 0]]);
  assert.equal(ext(blockStatusReply(e, { ...h, flags: CmdFlag.REQ_ONE })), [[8192, 3]]);
  assert.equal(ext(blockStatusReply(e, { ...h, length: 100 })), [[100, 3]]);
  const many = Array.from({ length: MAX_EXTENTS + 10 }, (_, i) => ({ length: 512, hole: i % 2 === 0, zero: true }));
  assert.is(ext(blockStatusReply(many, { ...h, length: 0xffffffff })).length, MAX_EXTENTS);
  assert.throws(() => blockStatusReply([], h), /no extents/);
  assert.throws(() => blockStatusReply([{ length: -1, hole: false, zero: false }], h), /length/);
});

test.run();
