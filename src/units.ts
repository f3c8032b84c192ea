/**
 * Branded block-number types and size parsing/formatting.
 *
 * A `MetaBlock` is a 4 KiB block of the metadata file, a `DataBlock` a pool block of the data file,
 * a `VirtualBlock` a pool-block-sized slot of a thin device. Branding lets the type checker refuse a
 * virtual block where a data block is expected; the values are plain numbers at run time.
 */
import { UsageError } from './errors.js';

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

export type MetaBlock = Brand<number, 'MetaBlock'>;
export type DataBlock = Brand<number, 'DataBlock'>;
export type VirtualBlock = Brand<number, 'VirtualBlock'>;

export const metaBlock = (n: number): MetaBlock => n as MetaBlock;
export const dataBlock = (n: number): DataBlock => n as DataBlock;
export const virtualBlock = (n: number): VirtualBlock => n as VirtualBlock;

/** Size of a metadata block in bytes (fixed by the dm-thin format). */
export const METADATA_BLOCK_SIZE = 4096;
/** 512-byte sectors, the unit dm-thin stores block sizes in. */
export const SECTOR_SIZE = 512;

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

const SUFFIX: Record<string, number> = {
  '': 1, b: 1, s: SECTOR_SIZE,
  k: KiB, kb: KiB, kib: KiB,
  m: MiB, mb: MiB, mib: MiB,
  g: GiB, gb: GiB, gib: GiB,
  t: TiB, tb: TiB, tib: TiB,
  p: 1024 * TiB, pb: 1024 * TiB, pib: 1024 * TiB,
};

/**
 * Parses a size such as `512`, `64K`, `10M`, `1G`, `2T`, `1.5G` (binary units; `s` = 512-byte sectors).
 * @example parseSize('64K') === 65536
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(String(text));
  const mult = m ? SUFFIX[m[2]!.toLowerCase()] : undefined;
  if (!m || mult === undefined) throw new UsageError(`Cannot parse ${what} '${text}': expected a number with an optional unit (512, 64K, 10M, 1G, 2T)`);
  const value = Number(m[1]) * mult;
  if (!Number.isFinite(value) || value > Number.MAX_SAFE_INTEGER) throw new UsageError(`Cannot parse ${what} '${text}': too large`);
  // A fraction must come to whole bytes (1.5K is 1536; 1.5 or 1.3K are no byte count).
  if (!Number.isInteger(value)) throw new UsageError(`Cannot parse ${what} '${text}': ${m[1]}${m[2] ? ` ${m[2]}` : ''} is ${value} bytes, expected a whole number of bytes`);
  return value;
}

/** Formats bytes with a binary unit, e.g. `formatSize(65536) === '64.0 KiB'`. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** Integer division rounding up. */
export function divCeil(a: number, b: number): number {
  return Math.floor((a + b - 1) / b);
}
