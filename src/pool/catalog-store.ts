/**
 * The catalog on disk: two checkpoint slots (`catalog.0`, `catalog.1`, see catalog-slots.ts) and
 * the log of changes since the newest checkpoint (`catalog.log`, see catalog-log.ts), written at
 * commit, in round 1, before the superblock.
 *
 * - **A commit** appends one entry at the log's next offset, in place (the file is
 *   preallocated with zeros, so the write never changes its size or allocates), and syncs it:
 *   one write and one fdatasync, whatever the number of devices. A commit that changed no
 *   record appends a tag-only entry (the new superblock's checksum).
 * - **When the log is full**, or after a reconciliation, the commit writes a full checkpoint
 *   into the older slot instead (a new generation, tagged with the new superblock checksum),
 *   in place; the log then starts over at offset 0 under that generation. The log is sized
 *   at max(1 MiB, 4 x the checkpoint) and grown (with zeros) in the commit that writes a
 *   bigger checkpoint, so checkpoints cost O(1) per commit over time.
 * - **Open**: each valid checkpoint, newest first, with the chain of its log entries; the state
 *   is the last point (checkpoint or entry) whose tag equals the superblock's checksum, and
 *   anything after it is an uncommitted tail (ignored, overwritten by the next append). A newer
 *   checkpoint that did not match was never committed and is wiped, so a later superblock
 *   cannot match it by chance. No match at all means the metadata changed outside thinpool:
 *   the records are reconciled from the newest state and the next commit writes a checkpoint.
 *
 * A catalog-only commit (nothing in the metadata changed) is committed once its entry is
 * durable: its tag is the current superblock's checksum.
 */
import { join } from 'node:path';
import { open } from 'node:fs/promises';
import { type BlockFile, FileBlockFile } from '../io/block-file.js';
import { ZEROES } from '../io/zeroes.js';
import { MiB } from '../units.js';
import { type CatalogChange, type LogEntry, encodeEntry, readChain } from './catalog-log.js';
import {
  type CatalogBody, type CatalogSlot, type DeviceRecord, type OutsideChanges, type PoolSettings, decodeSlot, encodeSlot, slotName,
} from './catalog-slots.js';

/** The log file's name in a pool directory. */
export const LOG_NAME = 'catalog.log';
/** The catalog's files in a pool directory. */
export const CATALOG_FILES = [slotName(0), slotName(1), LOG_NAME] as const;

const MIN_LOG_BYTES = MiB;
/** Slots are written in place, padded to this (they grow only when a checkpoint outgrows them). */
const SLOT_ALIGN = 4096;

/** How the catalog reaches its files (the pool directory; tests put a faulty file there). */
export interface CatalogFiles {
  /** Opens one of the catalog's files read-write, creating it (mode 0600) when missing. */
  open(name: string): Promise<BlockFile>;
  /** Makes the creation of files in the directory durable (fsync of the directory). */
  syncDirectory(): Promise<void>;
}

/** The catalog's files in the pool directory `dir`. */
export function directoryFiles(dir: string): CatalogFiles {
  return {
    open: (name) => FileBlockFile.open(join(dir, name), { create: true }),
    syncDirectory: () => syncDirectory(dir),
  };
}

/** fsync of a directory: the files created in it survive a power cut. */
export async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** What opening found: the records and whether they match the superblock. */
export interface LoadedCatalog {
  body: CatalogBody;
  /** 'in-sync' when the catalog matches the superblock; 'reconciled' when it was rebuilt. */
  state: 'in-sync' | 'reconciled';
  /** What the reconciliation found, when it changed anything. */
  changes: OutsideChanges | null;
}

/** Where the next commit goes. */
interface Position {
  /** Slot of the checkpoint in use (the next checkpoint goes to the other). */
  slot: number;
  /** Generation of that checkpoint: the epoch of the entries after it. */
  epoch: number;
  /** Entries after it so far, and the offset after the last. */
  seq: number;
  offset: number;
  /** crc of the last point (what the next entry chains to). */
  prev: number;
  /** Tag of the last point. */
  tag: number;
}

/** Counts for tests and benchmarks. */
export interface CatalogStoreStats {
  entries: number;
  checkpoints: number;
  logBytes: number;
  checkpointBytes: number;
}

export class CatalogStore {
  private needCheckpoint: boolean;
  private maxGeneration: number;
  private logSize: number;
  private slotSizes: [number, number];
  private lastCheckpointBytes: number;
  /** Commits written as log entries and as checkpoints since open. */
  readonly stats: CatalogStoreStats = { entries: 0, checkpoints: 0, logBytes: 0, checkpointBytes: 0 };

  private constructor(
    private readonly slots: [BlockFile, BlockFile],
    private readonly log: BlockFile,
    private pos: Position,
    opts: { needCheckpoint: boolean; maxGeneration: number; logSize: number; slotSizes: [number, number]; checkpointBytes: number },
  ) {
    this.needCheckpoint = opts.needCheckpoint;
    this.maxGeneration = opts.maxGeneration;
    this.logSize = opts.logSize;
    this.slotSizes = opts.slotSizes;
    this.lastCheckpointBytes = opts.checkpointBytes;
  }

  /** Tag of the last committed point: the superblock checksum the catalog on disk belongs to. */
  get tag(): number {
    return this.pos.tag;
  }

  /** Bytes the log file holds (preallocated). */
  get logBytes(): number {
    return this.logSize;
  }

  /**
   * Writes a new pool's catalog: checkpoint generation 1 in slot 0 tagged `csum`, an empty
   * slot 1 and a zeroed log, all synced with the directory.
   */
  static async create(files: CatalogFiles, body: CatalogBody, csum: number): Promise<void> {
    const { bytes } = encodeSlot(1, csum, body);
    const s0 = await files.open(slotName(0));
    const s1 = await files.open(slotName(1));
    const log = await files.open(LOG_NAME);
    try {
      await s0.writeDurable([{ position: 0, bufs: [padded(bytes)] }]);
      await s1.sync();
      await zeroFill(log, 0, logSizeFor(bytes.length));
      await files.syncDirectory();
    } finally {
      await s0.close();
      await s1.close();
      await log.close();
    }
  }

  /**
   * Opens the catalog of a pool whose superblock has checksum `csum` and device ids `ids`
   * (see the file comment for the algorithm); `defaults` gives settings when no checkpoint is
   * readable. A missing log (a pool from before the log) is created.
   */
  static async open(files: CatalogFiles, csum: number, ids: readonly number[], defaults: () => PoolSettings): Promise<{ store: CatalogStore; loaded: LoadedCatalog }> {
    const slotFiles: [BlockFile, BlockFile] = [await files.open(slotName(0)), await files.open(slotName(1))];
    const log = await files.open(LOG_NAME);
    try {
      return await CatalogStore.load(files, slotFiles, log, csum >>> 0, ids, defaults);
    } catch (err) {
      for (const f of [...slotFiles, log]) await f.close();
      throw err;
    }
  }

  private static async load(files: CatalogFiles, slotFiles: [BlockFile, BlockFile], log: BlockFile, csum: number, ids: readonly number[], defaults: () => PoolSettings): Promise<{ store: CatalogStore; loaded: LoadedCatalog }> {
    const slotSizes: [number, number] = [await slotFiles[0].size(), await slotFiles[1].size()];
    const found: CatalogSlot[] = [];
    for (const s of [0, 1]) {
      const slot = decodeSlot(s, await readAll(slotFiles[s]!, slotSizes[s]!));
      if (slot) found.push(slot);
    }
    found.sort((a, b) => b.generation - a.generation);
    let logSize = await log.size();
    const logBytes = Buffer.from(await readAll(log, logSize));
    const maxGeneration = found.length ? found[0]!.generation : 0;
    const checkpointBytes = (slot: CatalogSlot | undefined) => slot?.size ?? 0;

    // The newest checkpoint whose chain reaches the superblock.
    for (const [i, slot] of found.entries()) {
      const chain = readChain(logBytes, slot.generation, slot.crc);
      let last = -1;
      if (slot.superblockChecksum >>> 0 === csum) last = 0;
      for (let k = 0; k < chain.length; k++) if (chain[k]!.tag === csum) last = k + 1;
      if (last < 0) continue;
      const used = chain.slice(0, last);
      const body = replay(slot.body, used);
      const lastEntry = used[used.length - 1];
      const pos: Position = {
        slot: slot.slot, epoch: slot.generation, seq: used.length, offset: lastEntry ? lastEntry.offset + lastEntry.bytes : 0,
        prev: lastEntry ? lastEntry.crc : slot.crc, tag: csum,
      };
      // Newer checkpoints were never committed: wipe them so no later superblock matches them by chance.
      for (const newer of found.slice(0, i)) {
        await slotFiles[newer.slot]!.writeDurable([{ position: 0, bufs: [ZEROES.subarray(0, Math.min(SLOT_ALIGN, Math.max(1, slotSizes[newer.slot]!)))] }]);
      }
      logSize = await ensureLog(files, log, logSize, checkpointBytes(slot));
      const sync = sameIds(body.devices, ids);
      const loaded: LoadedCatalog = sync
        ? { body, state: 'in-sync', changes: body.outsideChanges }
        : reconcile(body, ids, defaults);
      const store = new CatalogStore(slotFiles, log, pos, { needCheckpoint: !sync, maxGeneration, logSize, slotSizes, checkpointBytes: checkpointBytes(slot) });
      return { store, loaded };
    }

    // No match: the metadata changed outside thinpool. Reconcile from the newest state.
    const newest = found[0];
    const base = newest ? replay(newest.body, readChain(logBytes, newest.generation, newest.crc)) : undefined;
    const loaded = reconcile(base, ids, defaults);
    logSize = await ensureLog(files, log, logSize, checkpointBytes(newest));
    const pos: Position = { slot: newest?.slot ?? 1, epoch: newest?.generation ?? 0, seq: 0, offset: 0, prev: 0, tag: newest?.superblockChecksum ?? 0 };
    const store = new CatalogStore(slotFiles, log, pos, { needCheckpoint: true, maxGeneration, logSize, slotSizes, checkpointBytes: checkpointBytes(newest) });
    return { store, loaded };
  }

  /**
   * Makes the catalog's change durable for the superblock with checksum `csum`: one log
   * entry, or a checkpoint of `full()` when the log is full or a reconciliation needs one.
   * Nothing in memory moves until the write and its sync succeed.
   */
  async commit(csum: number, change: CatalogChange, full: () => CatalogBody): Promise<'entry' | 'checkpoint'> {
    const pos = this.pos;
    if (!this.needCheckpoint) {
      const { bytes, crc } = encodeEntry(pos.epoch, pos.seq + 1, csum, pos.prev, change);
      if (pos.offset + bytes.length <= this.logSize) {
        await this.log.writeDurable([{ position: pos.offset, bufs: [bytes] }]);
        this.pos = { ...pos, seq: pos.seq + 1, offset: pos.offset + bytes.length, prev: crc, tag: csum >>> 0 };
        this.stats.entries++;
        this.stats.logBytes += bytes.length;
        return 'entry';
      }
    }
    const generation = this.maxGeneration + 1;
    const { bytes, crc } = encodeSlot(generation, csum, full());
    const slot = 1 - pos.slot;
    const data = padded(bytes);
    const want = logSizeFor(bytes.length);
    // The log is not written in this commit, so growing it goes alongside the checkpoint.
    await Promise.all([
      this.slots[slot]!.writeDurable([{ position: 0, bufs: [data] }]),
      want > this.logSize ? zeroFill(this.log, this.logSize, want) : undefined,
    ]);
    this.slotSizes[slot] = Math.max(this.slotSizes[slot]!, data.length);
    this.logSize = Math.max(this.logSize, want);
    this.maxGeneration = generation;
    this.needCheckpoint = false;
    this.lastCheckpointBytes = bytes.length;
    this.pos = { slot, epoch: generation, seq: 0, offset: 0, prev: crc, tag: csum >>> 0 };
    this.stats.checkpoints++;
    this.stats.checkpointBytes += bytes.length;
    return 'checkpoint';
  }

  /** The next commit writes a checkpoint (tests use it to reach that path). */
  requestCheckpoint(): void {
    this.needCheckpoint = true;
  }

  /** Size of the last checkpoint written or read, in bytes. */
  get checkpointBytes(): number {
    return this.lastCheckpointBytes;
  }

  async close(): Promise<void> {
    for (const f of [...this.slots, this.log]) await f.close();
  }
}

/** The log size for a checkpoint of `bytes`: max(1 MiB, 4 x bytes), in whole MiB. */
export function logSizeFor(checkpointBytes: number): number {
  return Math.max(MIN_LOG_BYTES, Math.ceil((4 * checkpointBytes) / MiB) * MiB);
}

/** Applies a chain of entries to a checkpoint's body (a new body; the checkpoint's is not changed). */
export function replay(body: CatalogBody, entries: readonly LogEntry[]): CatalogBody {
  const devices = new Map(body.devices.map((d) => [d.id, d]));
  let settings = body.settings;
  let outsideChanges = body.outsideChanges;
  for (const e of entries) {
    const c = e.change;
    for (const r of c.put ?? []) devices.set(r.id, r);
    for (const id of c.del ?? []) devices.delete(id);
    if (c.settings) settings = c.settings;
    if (c.outsideChanges !== undefined) outsideChanges = c.outsideChanges;
  }
  return { settings, devices: [...devices.values()], outsideChanges };
}

/**
 * Rebuilds the records for the ids the metadata holds: records of surviving ids are kept, the
 * rest dropped and reported, unknown ids listed unnamed.
 */
function reconcile(base: CatalogBody | undefined, ids: readonly number[], defaults: () => PoolSettings): LoadedCatalog {
  const known = new Map((base?.devices ?? []).map((d) => [d.id, d]));
  const present = new Set(ids);
  const dropped = [...known.values()].filter((d) => !present.has(d.id)).map((d) => ({ id: d.id, name: d.name }));
  const unknown = ids.filter((id) => !known.has(id));
  const now = new Date().toISOString();
  const devices: DeviceRecord[] = ids.map((id) => known.get(id) ?? { id, name: null, sizeBytes: null, origin: null, originName: null, created: now });
  const changes: OutsideChanges = { at: now, dropped, unknown };
  return { body: { settings: base?.settings ?? defaults(), devices, outsideChanges: changes }, state: 'reconciled', changes };
}

function sameIds(devices: readonly DeviceRecord[], ids: readonly number[]): boolean {
  if (devices.length !== ids.length) return false;
  const s = new Set(ids);
  return devices.every((d) => s.has(d.id));
}

/** A checkpoint padded with zeros to a whole number of {@link SLOT_ALIGN} blocks. */
function padded(bytes: Buffer): Buffer {
  const n = Math.ceil(bytes.length / SLOT_ALIGN) * SLOT_ALIGN;
  return n === bytes.length ? bytes : Buffer.concat([bytes, ZEROES.subarray(0, n - bytes.length)]);
}

async function readAll(f: BlockFile, size: number): Promise<Uint8Array> {
  const buf = new Uint8Array(size);
  if (size) await f.read(buf, 0);
  return buf;
}

/** Writes zeros over `[from, to)` of `f` and syncs (allocates the space, so later in-place writes never do). */
async function zeroFill(f: BlockFile, from: number, to: number): Promise<void> {
  const runs = [];
  for (let pos = from; pos < to; ) {
    const n = Math.min(ZEROES.length, to - pos);
    runs.push({ position: pos, bufs: [ZEROES.subarray(0, n)] });
    pos += n;
  }
  await f.writeDurable(runs);
}

/** Makes the log at least as large as a checkpoint of `checkpointBytes` needs (a new log's creation is made durable too). */
async function ensureLog(files: CatalogFiles, log: BlockFile, size: number, checkpointBytes: number): Promise<number> {
  const want = logSizeFor(checkpointBytes);
  if (size >= want) return size;
  await zeroFill(log, size, want);
  if (size === 0) await files.syncDirectory();
  return want;
}
