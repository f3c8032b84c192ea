/**
 * Per-device usage like `thin_ls`: mapped, exclusive and shared data blocks.
 *
 * A mapping is *exclusive* when its data block is mapped exactly once in the whole pool (by one
 * virtual block of one device), and *shared* otherwise. Every device's mappings are counted in
 * full, so two devices that share a mapping-tree node after a kernel snapshot share all of that
 * node's blocks, and a block mapped twice by one device is shared. thin_ls 0.9 counts this way
 * (two passes over every device with 2 bits per data block); 1.x counts per distinct leaf and
 * marks every mapping under a shared node as shared, which gives the same numbers on consistent
 * metadata. `mappedBlocks` is the number of mappings found (1.x), which equals the details'
 * `mapped_blocks` 0.9 prints unless the metadata is damaged.
 *
 * Memory: 2 bits per data block of the pool, nothing per mapping.
 */
import { CorruptionError } from '../errors.js';
import type { BlockTime } from './block-time.js';
import type { MetadataView, ThinMetadata } from './metadata.js';
import type { Key } from '../pdata/btree-node.js';

export interface LsOptions {
  /** List the held metadata snapshot instead of the live metadata (`thin_ls -m`). */
  metadataSnap?: boolean;
}

/** One row of `thin_ls`. */
export interface LsDevice {
  id: number;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
  transactionId: number;
  creationTime: number;
  snapshottedTime: number;
}

/** Saturating 2-bit use counts per data block: 0, 1, or 2 meaning "2 or more". */
class UseCounts {
  private readonly bits: Uint8Array;
  constructor(readonly nrBlocks: number) {
    this.bits = new Uint8Array(Math.ceil(nrBlocks / 4));
  }
  inc(b: number): void {
    const i = b >>> 2;
    const s = (b & 3) << 1;
    const byte = this.bits[i]!;
    const c = (byte >> s) & 3;
    if (c < 2) this.bits[i] = byte + (1 << s);
  }
  get(b: number): number {
    return (this.bits[b >>> 2]! >> ((b & 3) << 1)) & 3;
  }
}

/**
 * Lists every device with its mapped, exclusive and shared block counts and its details, in
 * device-id order.
 * @throws CorruptionError when a mapping names a data block past the end of the pool.
 * @example for (const d of await lsDevices(md)) console.log(d.id, d.exclusiveBlocks);
 */
export async function lsDevices(md: ThinMetadata, opts: LsOptions = {}): Promise<LsDevice[]> {
  const view = await md.view(!!opts.metadataSnap);
  return lsView(view, md.nrDataBlocks);
}

/** {@link lsDevices} over a view; `nrDataBlocks` sizes the count table (a snapshot's view has 0). */
export async function lsView(view: MetadataView, nrDataBlocks = view.nrDataBlocks): Promise<LsDevice[]> {
  const counts = new UseCounts(nrDataBlocks);
  const check = (id: number, v: Key, m: BlockTime) => {
    if (m.block >= nrDataBlocks) {
      throw new CorruptionError(`Cannot count the blocks of thin device ${id}: virtual block ${v} maps data block ${m.block}, past the end of the pool (${nrDataBlocks} blocks)`, { id, vblock: String(v), block: m.block });
    }
  };
  for (const d of view.devices) {
    await view.walk(d.id, (v, m) => {
      check(d.id, v, m);
      counts.inc(m.block);
    });
  }
  const out: LsDevice[] = [];
  for (const d of view.devices) {
    let mapped = 0;
    let exclusive = 0;
    await view.walk(d.id, (_v, m) => {
      mapped++;
      if (counts.get(m.block) === 1) exclusive++;
    });
    out.push({
      id: d.id,
      mappedBlocks: mapped,
      exclusiveBlocks: exclusive,
      sharedBlocks: mapped - exclusive,
      transactionId: d.transactionId,
      creationTime: d.creationTime,
      snapshottedTime: d.snapshottedTime,
    });
  }
  return out;
}

/** Column names `thin_ls -o` accepts that are plain numbers. */
export type LsField =
  | 'DEV' | 'MAPPED_BLOCKS' | 'EXCLUSIVE_BLOCKS' | 'SHARED_BLOCKS'
  | 'MAPPED_SECTORS' | 'EXCLUSIVE_SECTORS' | 'SHARED_SECTORS'
  | 'MAPPED_BYTES' | 'EXCLUSIVE_BYTES' | 'SHARED_BYTES'
  | 'TRANSACTION' | 'CREATE_TIME' | 'SNAP_TIME';

export const LS_DEFAULT_FIELDS: readonly LsField[] = ['DEV', 'MAPPED_BLOCKS', 'EXCLUSIVE_BLOCKS', 'SHARED_BLOCKS', 'MAPPED_SECTORS', 'TRANSACTION', 'CREATE_TIME', 'SNAP_TIME'];

function cell(d: LsDevice, f: LsField, sectorsPerBlock: number): string {
  const blocks = (n: number, unit: number) => String(BigInt(n) * BigInt(unit));
  switch (f) {
    case 'DEV': return String(d.id);
    case 'MAPPED_BLOCKS': return String(d.mappedBlocks);
    case 'EXCLUSIVE_BLOCKS': return String(d.exclusiveBlocks);
    case 'SHARED_BLOCKS': return String(d.sharedBlocks);
    case 'MAPPED_SECTORS': return blocks(d.mappedBlocks, sectorsPerBlock);
    case 'EXCLUSIVE_SECTORS': return blocks(d.exclusiveBlocks, sectorsPerBlock);
    case 'SHARED_SECTORS': return blocks(d.sharedBlocks, sectorsPerBlock);
    case 'MAPPED_BYTES': return blocks(d.mappedBlocks, sectorsPerBlock * 512);
    case 'EXCLUSIVE_BYTES': return blocks(d.exclusiveBlocks, sectorsPerBlock * 512);
    case 'SHARED_BYTES': return blocks(d.sharedBlocks, sectorsPerBlock * 512);
    case 'TRANSACTION': return String(d.transactionId);
    case 'CREATE_TIME': return String(d.creationTime);
    case 'SNAP_TIME': return String(d.snapshottedTime);
  }
}

/**
 * The rows as `thin_ls -o FIELDS` prints them (0.9 and 1.x alike): a header row unless
 * `noHeaders`, every cell right-aligned to its column's width and followed by one space.
 * @example process.stdout.write(formatLsTable(await lsDevices(md), md.dataBlockSize));
 */
export function formatLsTable(rows: readonly LsDevice[], dataBlockSize: number, opts: { fields?: readonly LsField[]; noHeaders?: boolean } = {}): string {
  const fields = opts.fields ?? LS_DEFAULT_FIELDS;
  const grid: string[][] = [];
  if (!opts.noHeaders) grid.push([...fields]);
  for (const r of rows) grid.push(fields.map((f) => cell(r, f, dataBlockSize)));
  const widths = fields.map((_, i) => Math.max(0, ...grid.map((row) => row[i]!.length)));
  return grid.map((row) => row.map((c, i) => c.padStart(widths[i]!) + ' ').join('') + '\n').join('');
}
