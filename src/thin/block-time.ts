/**
 * The value of a bottom-level mapping: `(data_block << 24) | (time & 0xffffff)` as a u64, so a
 * data block number has 40 bits and a time 24.
 */
import type { ValueType } from '../pdata/btree.js';

export interface BlockTime {
  block: number;
  time: number;
}

export const TIME_MASK = 0xffffff;
/** Data block numbers are 40 bits. */
export const MAX_DATA_BLOCK = 2 ** 40 - 1;

/**
 * Unpacks a block-time value. The object also carries `shared: false` so the lookup path can
 * set it without allocating a second object or changing its shape.
 */
export function unpackBlockTime(v: DataView, o: number): BlockTime & { shared: boolean } {
  const lo = v.getUint32(o, true);
  const hi = v.getUint32(o + 4, true);
  return { block: hi * 256 + (lo >>> 24), time: lo & TIME_MASK, shared: false };
}

export function packBlockTime(v: DataView, o: number, bt: BlockTime): void {
  v.setUint32(o, (((bt.block & 0xff) << 24) | (bt.time & TIME_MASK)) >>> 0, true);
  v.setUint32(o + 4, Math.floor(bt.block / 256), true);
}

/** The block-time value type with reference counting on the data space map. */
export function blockTimeValue(data: { inc(b: number): void | Promise<void>; dec(b: number): unknown }): ValueType<BlockTime> {
  return {
    size: 8,
    unpack: unpackBlockTime,
    pack: packBlockTime,
    inc: (bt) => data.inc(bt.block),
    dec: async (bt) => {
      await data.dec(bt.block);
    },
    equal: (a, b) => a.block === b.block && a.time === b.time,
  };
}
