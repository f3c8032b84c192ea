/**
 * Builds the replies that carry data: READ (simple, or structured with OFFSET_DATA / OFFSET_HOLE
 * chunks) and BLOCK_STATUS for `base:allocation`. Each builder returns the buffers of one whole
 * reply, to be written back to back.
 */
import { IoError } from '../errors.js';
import type { AllocationExtent, ReadSegment } from './export.js';
import {
  CmdFlag,
  OFFSET_DATA_HEADER_SIZE,
  OFFSET_HOLE_SIZE,
  REPLY_FLAG_DONE,
  State,
  packBlockStatusChunk,
  packSimpleReply,
  writeOffsetDataHeader,
  writeOffsetHole,
  type RequestHeader,
} from './protocol.js';

/** Context id of `base:allocation` in SET_META_CONTEXT replies and BLOCK_STATUS chunks. */
export const BASE_ALLOCATION_ID = 1;
/** Most extents sent in one BLOCK_STATUS chunk (clients ask again for the rest). */
export const MAX_EXTENTS = 1 << 17;

const ZEROES = Buffer.alloc(1024 * 1024);

/**
 * The header of a successful reply to READ `h` whose `h.length` data bytes follow it: a simple
 * reply, or one OFFSET_DATA chunk flagged DONE (for data sent from elsewhere, e.g. a file).
 */
export function readReplyHeader(h: RequestHeader, structured: boolean): Buffer {
  if (!structured) return packSimpleReply(0, h.cookieHi, h.cookieLo);
  const head = Buffer.allocUnsafe(OFFSET_DATA_HEADER_SIZE);
  writeOffsetDataHeader(head, 0, REPLY_FLAG_DONE, h.cookieHi, h.cookieLo, h.offset, h.length);
  return head;
}

/**
 * Checks that `segs` cover `[offset, offset + length)` in order, drops empty ones and merges
 * neighbouring holes; throws (-> EIO) when the export broke the {@link NbdExport.read} contract.
 */
export function compactSegments(segs: readonly ReadSegment[], offset: number, length: number): ReadSegment[] {
  const out: ReadSegment[] = [];
  let pos = offset;
  for (const s of segs) {
    if (s.offset !== pos || !Number.isSafeInteger(s.length) || s.length < 0 || (s.data !== null && (!(s.data instanceof Uint8Array) || s.data.length !== s.length))) {
      throw new IoError(`Cannot send the read reply: the export returned a malformed segment at ${s.offset}+${s.length}, expected one at offset ${pos}`);
    }
    pos += s.length;
    if (s.length === 0) continue;
    const last = out[out.length - 1];
    if (last && last.data === null && s.data === null) out[out.length - 1] = { offset: last.offset, length: last.length + s.length, data: null };
    else out.push(s);
  }
  if (pos !== offset + length) throw new IoError(`Cannot send the read reply: the export's segments end at ${pos}, expected ${offset + length}`);
  return out;
}

/**
 * The successful reply to READ `h` from compacted, non-empty `segs`: a simple reply with holes
 * filled with zeros, or structured chunks (one per segment, a single OFFSET_DATA with DF when
 * the range mixes data and holes), the last one flagged DONE.
 * @example send(readReply(compactSegments(await exp.read(h.offset, h.length), h.offset, h.length), h, true));
 */
export function readReply(segs: readonly ReadSegment[], h: RequestHeader, structured: boolean): Uint8Array[] {
  const { cookieHi, cookieLo } = h;
  if (!structured) {
    const out: Uint8Array[] = [packSimpleReply(0, cookieHi, cookieLo)];
    for (const s of segs) pushData(out, s);
    return out;
  }
  if (segs.length === 1 && segs[0]!.data === null) {
    const hole = Buffer.allocUnsafe(OFFSET_HOLE_SIZE);
    writeOffsetHole(hole, 0, REPLY_FLAG_DONE, cookieHi, cookieLo, h.offset, h.length);
    return [hole];
  }
  if (segs.length === 1 || (h.flags & CmdFlag.DF) !== 0) {
    const head = Buffer.allocUnsafe(OFFSET_DATA_HEADER_SIZE);
    writeOffsetDataHeader(head, 0, REPLY_FLAG_DONE, cookieHi, cookieLo, h.offset, h.length);
    const out: Uint8Array[] = [head];
    for (const s of segs) pushData(out, s);
    return out;
  }
  const heads = Buffer.allocUnsafe(segs.length * OFFSET_HOLE_SIZE);
  const out: Uint8Array[] = [];
  let at = 0;
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    const flags = i === segs.length - 1 ? REPLY_FLAG_DONE : 0;
    if (s.data === null) {
      writeOffsetHole(heads, at, flags, cookieHi, cookieLo, s.offset, s.length);
      out.push(heads.subarray(at, at + OFFSET_HOLE_SIZE));
      at += OFFSET_HOLE_SIZE;
    } else {
      writeOffsetDataHeader(heads, at, flags, cookieHi, cookieLo, s.offset, s.length);
      out.push(heads.subarray(at, at + OFFSET_DATA_HEADER_SIZE), s.data);
      at += OFFSET_DATA_HEADER_SIZE;
    }
  }
  return out;
}

/**
 * The BLOCK_STATUS chunk for request `h`: extents clipped to the requested length, neighbours
 * with equal status merged, one extent with REQ_ONE, at most {@link MAX_EXTENTS}. Throws (-> EIO)
 * when the export returned no usable extent.
 */
export function blockStatusReply(extents: readonly AllocationExtent[], h: RequestHeader): Buffer {
  const reqOne = (h.flags & CmdFlag.REQ_ONE) !== 0;
  const out: number[] = [];
  let left = h.length;
  for (const e of extents) {
    if (!Number.isSafeInteger(e.length) || e.length < 0) throw new IoError(`Cannot send the block status reply: the export returned an extent of length ${e.length}`);
    if (e.length === 0) continue;
    const len = Math.min(e.length, left);
    const status = (e.hole ? State.HOLE : 0) | (e.zero ? State.ZERO : 0);
    if (out.length > 0 && out[out.length - 1] === status) out[out.length - 2]! += len;
    else if (out.length > 0 && (reqOne || out.length >= 2 * MAX_EXTENTS)) break;
    else out.push(len, status);
    left -= len;
    if (left === 0) break;
  }
  if (out.length === 0) throw new IoError('Cannot send the block status reply: the export returned no extents');
  return packBlockStatusChunk(h.cookieHi, h.cookieLo, BASE_ALLOCATION_ID, out);
}

function pushData(out: Uint8Array[], s: ReadSegment): void {
  if (s.data !== null) {
    out.push(s.data);
    return;
  }
  for (let left = s.length; left > 0; left -= ZEROES.length) out.push(left >= ZEROES.length ? ZEROES : ZEROES.subarray(0, left));
}
