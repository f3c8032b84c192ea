/**
 * B-tree node layout (one 4 KiB block), shared by every tree of the format:
 *
 * ```
 * off  size  field
 *   0    4   csum (salt 121107)
 *   4    4   flags: 1 = INTERNAL, 2 = LEAF
 *   8    8   blocknr (own location)
 *  16    4   nr_entries
 *  20    4   max_entries = 3 * floor(floor(4064 / (8 + value_size)) / 3)
 *  24    4   value_size
 *  28    4   padding
 *  32    8 * max_entries            keys (u64, strictly increasing)
 *  32 + 8 * max_entries  value_size * max_entries   values
 * ```
 * Slots at or past `nr_entries` may hold stale bytes (the kernel leaves them); readers ignore them.
 * Keys are compared as (high u32, low u32) pairs, so every 64-bit key is exact.
 */
import { CorruptionError } from '../errors.js';
import { type Block, type WritableBlock, BLOCK_SIZE, checksumValidator, readU64, writeU64 } from './block-manager.js';

export const NODE_HEADER_SIZE = 32;
export const INTERNAL_NODE = 1;
export const LEAF_NODE = 2;
export const BTREE_NODE_SALT = 121107;

/** A key: a number when below 2^53, else a bigint (only crafted metadata has such keys). */
export type Key = number | bigint;

const TWO32 = 4294967296;

/** `max_entries` for a value size: 336 (4 bytes), 252 (8), 168 (16), 126 (24). */
export function maxEntriesFor(valueSize: number): number {
  return 3 * Math.floor(Math.floor((BLOCK_SIZE - NODE_HEADER_SIZE) / (8 + valueSize)) / 3);
}

export const nodeValidator = checksumValidator('btree node', BTREE_NODE_SALT, 8, (b) => {
  const flags = b.view.getUint32(4, true);
  const nr = b.view.getUint32(16, true);
  const max = b.view.getUint32(20, true);
  const vs = b.view.getUint32(24, true);
  const bad = (why: string) => new CorruptionError(`Cannot read btree node ${b.nr}: ${why}`, { block: b.nr, kind: 'btree node', reason: why });
  if (flags !== INTERNAL_NODE && flags !== LEAF_NODE) throw bad(`flags ${flags}, expected 1 (internal) or 2 (leaf)`);
  if (max === 0 || max % 3 !== 0 || NODE_HEADER_SIZE + (8 + vs) * max > BLOCK_SIZE) throw bad(`max_entries ${max} does not fit value size ${vs}`);
  if (nr > max) throw bad(`nr_entries ${nr} exceeds max_entries ${max}`);
  if (flags === INTERNAL_NODE && vs !== 8) throw bad(`internal node with value size ${vs}, expected 8`);
});

export function splitKey(k: Key): [hi: number, lo: number] {
  if (typeof k === 'number') return [Math.floor(k / TWO32), k >>> 0];
  return [Number((k >> 32n) & 0xffffffffn), Number(k & 0xffffffffn)];
}

export function joinKey(hi: number, lo: number): Key {
  if (hi < 0x200000) return hi * TWO32 + lo;
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** The largest key (2^64 - 1). */
export const MAX_KEY = (1n << 64n) - 1n;

/** `k + n` in the form {@link joinKey} gives: a number below 2^53, a bigint at or above. */
export function addKey(k: Key, n: number): Key {
  if (typeof k === 'number' && k + n <= Number.MAX_SAFE_INTEGER) return k + n;
  const s = BigInt(k) + BigInt(n);
  return s <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(s) : s;
}

/** True when `a` and `b` are the same key, whichever form each is in. */
export function sameKey(a: Key, b: Key): boolean {
  return typeof a === typeof b ? a === b : BigInt(a) === BigInt(b);
}

/** `b - a` for `a <= b`, capped at 2^53 - 1 (lengths never come near it). */
export function keyGap(a: Key, b: Key): number {
  if (typeof a === 'number' && typeof b === 'number') return b - a;
  const d = BigInt(b) - BigInt(a);
  return d > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(d);
}

export const isLeaf = (b: Block): boolean => b.view.getUint32(4, true) === LEAF_NODE;
export const nrEntries = (b: Block): number => b.view.getUint32(16, true);
export const maxEntries = (b: Block): number => b.view.getUint32(20, true);
export const valueSize = (b: Block): number => b.view.getUint32(24, true);
export const valueOffset = (b: Block, i: number): number => NODE_HEADER_SIZE + 8 * maxEntries(b) + i * valueSize(b);

export function setNrEntries(b: WritableBlock, n: number): void {
  b.view.setUint32(16, n, true);
}

export function keyHi(b: Block, i: number): number {
  return b.view.getUint32(NODE_HEADER_SIZE + 8 * i + 4, true);
}
export function keyLo(b: Block, i: number): number {
  return b.view.getUint32(NODE_HEADER_SIZE + 8 * i, true);
}
export function keyAt(b: Block, i: number): Key {
  return joinKey(keyHi(b, i), keyLo(b, i));
}
export function setKey(b: WritableBlock, i: number, hi: number, lo: number): void {
  b.view.setUint32(NODE_HEADER_SIZE + 8 * i, lo, true);
  b.view.setUint32(NODE_HEADER_SIZE + 8 * i + 4, hi, true);
}

/** Child block number of an internal node (u64 value). */
export function childAt(b: Block, i: number): number {
  return readU64(b.view, NODE_HEADER_SIZE + 8 * maxEntries(b) + 8 * i);
}
export function setChild(b: WritableBlock, i: number, child: number): void {
  writeU64(b.view, NODE_HEADER_SIZE + 8 * maxEntries(b) + 8 * i, child);
}

/** Formats an empty node in place. */
export function initNode(b: WritableBlock, leaf: boolean, vsize: number): void {
  b.data.fill(0, 4, NODE_HEADER_SIZE);
  b.view.setUint32(4, leaf ? LEAF_NODE : INTERNAL_NODE, true);
  b.view.setUint32(16, 0, true);
  b.view.setUint32(20, maxEntriesFor(vsize), true);
  b.view.setUint32(24, vsize, true);
}

/** -1, 0, 1 comparing key slot `i` with (hi, lo). */
function cmpAt(b: Block, i: number, hi: number, lo: number): number {
  const h = keyHi(b, i);
  if (h !== hi) return h < hi ? -1 : 1;
  const l = keyLo(b, i);
  return l === lo ? 0 : l < lo ? -1 : 1;
}

/** Index of the first key >= (hi, lo), in [0, nr]. */
export function lowerBound(b: Block, hi: number, lo: number): number {
  let a = 0;
  let z = nrEntries(b);
  while (a < z) {
    const m = (a + z) >>> 1;
    if (cmpAt(b, m, hi, lo) < 0) a = m + 1;
    else z = m;
  }
  return a;
}

/** Index of the last key <= (hi, lo), or -1. */
export function lastAtOrBelow(b: Block, hi: number, lo: number): number {
  let a = 0;
  let z = nrEntries(b);
  while (a < z) {
    const m = (a + z) >>> 1;
    if (cmpAt(b, m, hi, lo) <= 0) a = m + 1;
    else z = m;
  }
  return a - 1;
}

export function keyEquals(b: Block, i: number, hi: number, lo: number): boolean {
  return i < nrEntries(b) && keyLo(b, i) === lo && keyHi(b, i) === hi;
}

/** Opens a gap at slot `i` (keys and values move up by one); nr_entries grows by one. */
export function insertGap(b: WritableBlock, i: number): void {
  const nr = nrEntries(b);
  const vs = valueSize(b);
  const vbase = NODE_HEADER_SIZE + 8 * maxEntries(b);
  if (i < nr) {
    b.data.copyWithin(NODE_HEADER_SIZE + 8 * (i + 1), NODE_HEADER_SIZE + 8 * i, NODE_HEADER_SIZE + 8 * nr);
    b.data.copyWithin(vbase + vs * (i + 1), vbase + vs * i, vbase + vs * nr);
  }
  setNrEntries(b, nr + 1);
}

/** Removes slots `[i, j)`; later slots move down. Vacated slots keep stale bytes, as the kernel's do. */
export function removeSlots(b: WritableBlock, i: number, j: number): void {
  const nr = nrEntries(b);
  const vs = valueSize(b);
  const vbase = NODE_HEADER_SIZE + 8 * maxEntries(b);
  if (j < nr) {
    b.data.copyWithin(NODE_HEADER_SIZE + 8 * i, NODE_HEADER_SIZE + 8 * j, NODE_HEADER_SIZE + 8 * nr);
    b.data.copyWithin(vbase + vs * i, vbase + vs * j, vbase + vs * nr);
  }
  setNrEntries(b, nr - (j - i));
}

/**
 * Copies `count` entries from `src` slot `si` to `dst` slot `di` (dst must have room; the caller sets
 * nr_entries). Nodes must have the same value size.
 */
export function copySlots(dst: WritableBlock, di: number, src: Block, si: number, count: number): void {
  if (count <= 0) return;
  const vs = valueSize(src);
  dst.data.set(src.data.subarray(NODE_HEADER_SIZE + 8 * si, NODE_HEADER_SIZE + 8 * (si + count)), NODE_HEADER_SIZE + 8 * di);
  const sv = NODE_HEADER_SIZE + 8 * maxEntries(src);
  const dv = NODE_HEADER_SIZE + 8 * maxEntries(dst);
  dst.data.set(src.data.subarray(sv + vs * si, sv + vs * (si + count)), dv + vs * di);
}

/** Moves entries within one node: slots [si, si+count) to di (overlap-safe). */
export function moveSlots(b: WritableBlock, di: number, si: number, count: number): void {
  if (count <= 0 || di === si) return;
  const vs = valueSize(b);
  const vbase = NODE_HEADER_SIZE + 8 * maxEntries(b);
  b.data.copyWithin(NODE_HEADER_SIZE + 8 * di, NODE_HEADER_SIZE + 8 * si, NODE_HEADER_SIZE + 8 * (si + count));
  b.data.copyWithin(vbase + vs * di, vbase + vs * si, vbase + vs * (si + count));
}
