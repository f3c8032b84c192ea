/**
 * What a thin device's byte I/O ({@link ThinVolume}) needs of the pool it lives in, and nothing
 * more: the I/O gate, the data file, the read-buffer pool, data block allocation, the commit and
 * data sync a FUA or FLUSH asks for, the metadata-full guard, and the pool's mode. {@link Pool}
 * implements it; the device's own mappings come through its `ThinDevice` handle and its name,
 * size and read-only flag are pushed to the volume by the pool when they change.
 *
 * In the kernel's terms: what `thin_c` reaches through `tc->pool` (pool mode, allocation, the
 * deferred flush/commit) in `dm-thin.c`.
 */
import type { BlockFile, FileBlockFile } from '../io/block-file.js';
import type { BufferPool } from '../io/buffer-pool.js';
import type { Gate } from './gate.js';

/** `rw` writable; `ro` read-only (metadata full or needs_check); `out-of-data-space` writes that need a new block fail; `fail` after a metadata I/O error. */
export type PoolMode = 'rw' | 'ro' | 'out-of-data-space' | 'fail';

export interface VolumeHost {
  /** Held shared by every read, write and discard; exclusively by commits and device changes. */
  readonly gate: Gate;
  /** The pool's data blocks (small reads may first try the page cache: `readCached`). */
  readonly dataFile: BlockFile & Pick<FileBlockFile, 'readCached'>;
  /** Read buffers reused across requests. */
  readonly buffers: BufferPool;
  /** The data file's descriptor when its pages may be sent by reference (zero-copy-reads.ts), else undefined. */
  readonly sendableDataFd: number | undefined;
  /** Data block size in bytes. */
  readonly blockSize: number;
  readonly mode: PoolMode;
  /** The metadata carries NEEDS_CHECK (named when writes are refused). */
  readonly needsCheck: boolean;
  /**
   * Allocates `n` data blocks for a write (auto-extending the pool as configured).
   * @throws NoSpaceError when the pool cannot give them.
   */
  allocate(n: number): Promise<number[]>;
  /** Gives back blocks {@link allocate} handed out that a failed write did not map. */
  release(blocks: readonly number[]): Promise<void>;
  /** Runs a metadata change; metadata full turns the pool read-only (see `Pool.guard`). */
  guard<T>(fn: () => Promise<T>): Promise<T>;
  /** Commits the pool (every completed write and mapping change becomes durable). */
  commit(): Promise<void>;
  /** Makes completed data writes durable, without a metadata commit. */
  syncData(): Promise<void>;
  /**
   * Told whether the host file system had room for a data write that needed new host space
   * (false after one failed with ENOSPC/EDQUOT, true after one with new blocks succeeded); the
   * pool logs the changes. Called on every such write: it must be cheap.
   */
  noteHostSpace?(room: boolean): void;
  /**
   * A data write failed after it was acknowledged (see `ThinVolume.write`'s `accepted`): the
   * pool turns read-only and every later flush or commit fails, so the client learns it at its
   * next flush, as from a disk whose write cache could not be written out.
   */
  writeLost(what: string, err: unknown): void;
}

/** What the pool tells a volume about its device (and tells again when it changes). */
export interface VolumeState {
  /** `name`, or `id:N` for an unnamed device. */
  name: string;
  /** Size in bytes. */
  size: number;
  /** The device refuses writes. */
  readOnly: boolean;
}
