/**
 * A pool directory's files from birth to removal: create (data file, formatted metadata, first
 * catalog slot), open (lock, files, metadata, catalog reconciled with the superblock), adopt
 * (links to a metadata + data pair made elsewhere) and destroy. {@link Pool}'s static methods
 * are the public door; this file holds what they do to the directory.
 */
import { mkdir, readdir, rm, stat, symlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { BusyError, ExistsError, NoSpaceError, NotFoundError } from '../errors.js';
import { type BlockFile, FileBlockFile } from '../io/block-file.js';
import { newBlock } from '../pdata/block-manager.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map-disk.js';
import { ThinMetadata } from '../thin/metadata.js';
import { superblockValidator, unpackSuperblock } from '../thin/superblock.js';
import { estimateMetadataBytes } from '../thin/metadata-size.js';
import { GiB, KiB, METADATA_BLOCK_SIZE, formatSize } from '../units.js';
import type { CatalogBody, PoolSettings } from './catalog-slots.js';
import { CATALOG_FILES, type CatalogFiles, CatalogStore, type LoadedCatalog, directoryFiles, syncDirectory } from './catalog-store.js';
import { lockPoolFile, markOwner, ownerOf, poolIdentity } from './file-owner.js';
import { PoolLock } from './pool-lock.js';

export const MIN_BLOCK_SIZE = 64 * KiB;
export const MAX_BLOCK_SIZE = GiB;

/** The files a pool directory holds (besides `lock` and, while served, the sockets). */
export const POOL_FILES = ['metadata', 'data', ...CATALOG_FILES] as const;

export interface PoolCreateOptions {
  dir: string;
  /** Capacity in bytes (rounded down to whole blocks). */
  dataSize: number;
  /** Metadata file size in bytes (default: estimated for the data size and 1000 devices, at least 2 MiB). */
  metadataSize?: number;
  /** Data block size in bytes: 64 KiB .. 1 GiB, a multiple of 64 KiB (default 64 KiB). */
  blockSize?: number;
  /** Free space (bytes) under which the pool auto-extends (default 10% of the data size). */
  lowWaterMark?: number;
  /** Grow the capacity when free space falls under the low-water mark (default true). */
  autoExtend?: boolean;
  /** Bytes added per auto-extension (default 20% of the data size, at least one block). */
  autoExtendStep?: number;
  /** Largest capacity auto-extension reaches (default 4 x the data size). */
  autoExtendMax?: number;
}

/**
 * Points of a commit where a fault-injection hook runs (tests kill the process or cut the power
 * there). Round 1 runs the first three at once, in any order: `data-synced` (the data file's
 * fdatasync, when writes completed since the last one), `metadata-written` (the metadata blocks
 * written and synced), `catalog-written` (the catalog's log entry or checkpoint written and
 * synced; the only point of a commit that changed the catalog alone). Round 2:
 * `superblock-written` (the commit point), then the freed blocks are punched.
 */
export type CommitPoint = 'data-synced' | 'metadata-written' | 'catalog-written' | 'superblock-written';

/** How a pool reaches its files (the directory; fault-injection tests put in-memory faulty files there). */
export interface PoolFiles extends CatalogFiles {
  /** Opens `metadata` or `data` (read-write; `create` makes it, mode 0600). */
  open(name: string, opts?: { create?: boolean }): Promise<BlockFile & Pick<FileBlockFile, 'readCached'>>;
}

export interface PoolOpenOptions {
  /**
   * Fault injection: called at each point of every commit (tests kill the process there to
   * show the pool reopens consistently whatever the point).
   */
  commitHook?: (point: CommitPoint) => void | Promise<void>;
  /** Commit on a timer when there are changes (milliseconds; 0 = only on flush/close). */
  commitIntervalMs?: number;
  /** Clean metadata blocks cached in memory (default 16384 = 64 MiB); also the dirty blocks kept before a transaction spills early. */
  cacheBlocks?: number;
  /** Bytes of read buffers kept idle for reuse (default 64 MiB, io/buffer-pool.ts). */
  idleReadBufferBytes?: number;
  /** Where the pool's files are opened (fault injection; default the pool directory). */
  files?: PoolFiles;
}

/** What opening a pool directory gives: its lock, both files, the metadata and the catalog. */
export interface OpenedPool {
  dir: string;
  /** What opening did that the user should hear about (a short metadata file grown). */
  notices: string[];
  lock: PoolLock;
  metadataFile: BlockFile;
  dataFile: BlockFile & Pick<FileBlockFile, 'readCached'>;
  md: ThinMetadata;
  catalog: LoadedCatalog;
  catalogStore: CatalogStore;
  /** Closes the files and releases the lock (for a failure before the pool takes them over). */
  abandon(): Promise<void>;
}

function checkBlockSize(bs: number): void {
  if (!Number.isInteger(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || bs % MIN_BLOCK_SIZE !== 0) {
    throw new RangeError(`Cannot use a block size of ${bs} bytes: it must be a multiple of 64 KiB between 64 KiB and 1 GiB`);
  }
}

/** Fails when `dir` holds a pool's files already: `Cannot <action> DIR: it already holds <what> (files)`. */
async function checkEmpty(dir: string, action: string, what: string): Promise<void> {
  const existing = (await readdir(dir)).filter((f) => (POOL_FILES as readonly string[]).includes(f));
  if (existing.length) throw new ExistsError(`Cannot ${action} ${dir}: it already holds ${what} (${existing.join(', ')})`, { dir });
}

/** Writes a new pool's files into `opts.dir` (which must be empty or missing); the pool is not left open. */
export async function createPoolFiles(opts: PoolCreateOptions): Promise<void> {
  const bs = opts.blockSize ?? MIN_BLOCK_SIZE;
  checkBlockSize(bs);
  const nrDataBlocks = Math.floor(opts.dataSize / bs);
  if (!(nrDataBlocks >= 1)) throw new RangeError(`Cannot create a pool of ${opts.dataSize} bytes: it must hold at least one ${formatSize(bs)} block`);
  const metaBytes = opts.metadataSize ?? estimateMetadataBytes(nrDataBlocks);
  if (metaBytes < 64 * KiB) throw new RangeError(`Cannot create a pool with ${metaBytes} bytes of metadata: at least 64 KiB`);
  await mkdir(opts.dir, { recursive: true });
  await checkEmpty(opts.dir, 'create a pool in', 'one');
  const lock = await PoolLock.acquire(opts.dir);
  try {
    const data = await FileBlockFile.open(join(opts.dir, 'data'), { create: true });
    await data.truncate(nrDataBlocks * bs);
    await data.close();
    const meta = await FileBlockFile.open(join(opts.dir, 'metadata'), { create: true });
    const md = await ThinMetadata.format(meta, { dataBlockSize: bs / 512, nrDataBlocks, nrMetadataBlocks: Math.floor(metaBytes / METADATA_BLOCK_SIZE) });
    await reserveMetadata(meta, 'create the pool');
    const settings: PoolSettings = {
      lowWaterMarkBlocks: opts.lowWaterMark !== undefined ? Math.floor(opts.lowWaterMark / bs) : Math.max(1, Math.floor(nrDataBlocks / 10)),
      autoExtend: opts.autoExtend ?? true,
      autoExtendStepBlocks: Math.max(1, opts.autoExtendStep !== undefined ? Math.floor(opts.autoExtendStep / bs) : Math.ceil(nrDataBlocks / 5)),
      autoExtendMaxBlocks: opts.autoExtendMax !== undefined ? Math.floor(opts.autoExtendMax / bs) : nrDataBlocks * 4,
      created: new Date().toISOString(),
    };
    const body: CatalogBody = { settings, devices: [], outsideChanges: null };
    await CatalogStore.create(directoryFiles(opts.dir), body, md.superblockChecksum);
    await md.close();
    await meta.close();
    await syncDirectory(opts.dir);
  } finally {
    await lock.release();
  }
}

/**
 * Opens the pool files in `dir` under its lock. Metadata changed outside thinpool (kernel, LVM,
 * thin_restore) is reconciled with the catalog. The data file is grown to the capacity when it
 * is shorter (the kernel insists on that too).
 */
export async function openPoolFiles(dir: string, opts: PoolOpenOptions = {}): Promise<OpenedPool> {
  if (!opts.files) {
    try {
      await stat(join(dir, 'metadata'));
    } catch {
      throw new NotFoundError(`Cannot open pool ${dir}: no pool there (no metadata file)`, { dir });
    }
    try {
      await stat(join(dir, 'data'));
    } catch {
      throw new NotFoundError(`Cannot open pool ${dir}: its data file is missing`, { dir });
    }
  }
  const lock = await PoolLock.acquire(dir);
  const files = opts.files ?? poolDirectoryFiles(dir);
  let meta: BlockFile | undefined;
  let data: (BlockFile & Pick<FileBlockFile, 'readCached'>) | undefined;
  let store: CatalogStore | undefined;
  const abandon = async () => {
    await meta?.close();
    await data?.close();
    await store?.close();
    await lock.release();
  };
  try {
    meta = await files.open('metadata');
    data = await files.open('data');
    const notices: string[] = [];
    // The directory's own files (not the in-memory ones of fault-injection tests): flocked and
    // marked as this pool's, and the metadata given real host blocks.
    if (meta instanceof FileBlockFile && data instanceof FileBlockFile) await claimPoolFiles(dir, meta, data);
    const grown = await growShortMetadata(meta);
    if (grown) notices.push(grown);
    if (meta instanceof FileBlockFile) {
      try {
        await reserveMetadata(meta, `open pool ${dir}`);
      } catch (err) {
        if (!(err instanceof NoSpaceError)) throw err;
        notices.push(`${err.message}; until space is freed on the host, a commit may fail`);
      }
    }
    const md = await ThinMetadata.open(meta, opts.cacheBlocks === undefined ? {} : { cacheBlocks: opts.cacheBlocks });
    const opened = await CatalogStore.open(files, md.superblockChecksum, md.deviceIds(), () => ({
      lowWaterMarkBlocks: Math.max(1, Math.floor(md.nrDataBlocks / 10)),
      autoExtend: true,
      autoExtendStepBlocks: Math.max(1, Math.ceil(md.nrDataBlocks / 5)),
      autoExtendMaxBlocks: md.nrDataBlocks * 4,
      created: new Date().toISOString(),
    }));
    store = opened.store;
    const want = md.nrDataBlocks * md.blockBytes;
    if ((await data.size()) < want) await data.truncate(want);
    return { dir, notices, lock, metadataFile: meta, dataFile: data, md, catalog: opened.loaded, catalogStore: opened.store, abandon };
  } catch (err) {
    await abandon();
    throw err;
  }
}

/** The files of the pool directory `dir`. */
export function poolDirectoryFiles(dir: string): PoolFiles {
  const catalog = directoryFiles(dir);
  return {
    open: (name, opts) => FileBlockFile.open(join(dir, name), name === 'metadata' || name === 'data' ? (opts?.create ? { create: true } : {}) : { create: true }),
    syncDirectory: catalog.syncDirectory,
  };
}

/**
 * Makes the open metadata and data files this pool's: their flocks taken (no other process, and
 * no other open in this one, gets them while the pool is open), then refused if they belong to
 * another pool directory (see file-owner.ts), then marked as this directory's.
 */
async function claimPoolFiles(dir: string, meta: FileBlockFile, data: FileBlockFile): Promise<void> {
  const action = `open pool ${dir}`;
  await lockPoolFile(meta, 'metadata', action);
  await lockPoolFile(data, 'data', action);
  const me = await poolIdentity(dir);
  for (const role of ['metadata', 'data'] as const) {
    const owner = await ownerOf(join(dir, role), role);
    if (owner && owner !== me) {
      throw new BusyError(`Cannot ${action}: its ${role} file belongs to pool ${owner}, which links the same file (it was adopted there); open that pool, or take the files over with thinpool pool adopt --force`, { owner, role }, 'ELOCKED');
    }
  }
  await markOwner(join(dir, 'metadata'), me);
  await markOwner(join(dir, 'data'), me);
}

/**
 * Gives the whole metadata file real blocks on the host (it is created sparse), so that no
 * metadata write of a commit can ever fail because the host file system filled up with data:
 * a full host then fails the data writes that do not fit, with ENOSPC, and nothing else (the
 * kernel's metadata device is a real device for the same reason).
 * `bytes` (default: the file's size) is how much of it, from the start (an extension reserves its
 * new size first).
 * @throws NoSpaceError (`host: true`) when the host cannot give the space.
 */
export async function reserveMetadata(meta: FileBlockFile, action: string, bytes?: number): Promise<void> {
  const size = bytes ?? (await meta.size());
  try {
    await meta.allocate(0, size);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== 'ENOSPC' && code !== 'EDQUOT') throw err;
    throw new NoSpaceError(`Cannot ${action}: the host file system holding ${meta.path} has no room to reserve its ${formatSize(size)} of metadata`, { host: true, path: meta.path });
  }
}

/**
 * A metadata file shorter than its space map (a copy that dropped trailing unused blocks, a
 * truncation just past the last block in use) is grown back to the space map's size before it
 * is opened: the blocks past its end read as zeros either way, and only free blocks may lie
 * there, exactly what `pool check` accepts with a warning (a reachable block past the end is
 * damage that both the check and the open report). Returns the notice, or undefined when the
 * file was long enough or its superblock is not valid (the open then says why).
 */
async function growShortMetadata(meta: BlockFile): Promise<string | undefined> {
  const size = await meta.size();
  if (size < METADATA_BLOCK_SIZE) return undefined;
  const block = newBlock(0);
  await meta.read(block.data, 0);
  try {
    superblockValidator.check(block);
  } catch {
    return undefined;
  }
  const sb = unpackSuperblock(block);
  const want = sb.metadataSm.nrBlocks;
  const have = Math.floor(size / METADATA_BLOCK_SIZE);
  if (!(want > have && want <= MAX_METADATA_BLOCKS)) return undefined;
  await meta.truncate(want * METADATA_BLOCK_SIZE);
  return `the metadata file held ${have} blocks, fewer than its space map's ${want}; it was grown back to ${formatSize(want * METADATA_BLOCK_SIZE)} (the blocks past its old end were unused)`;
}

/**
 * Links a metadata + data pair made elsewhere (a copied LVM thin pool, Docker's loop-lvm
 * `devicemapper/{metadata,data}`, a kernel pool) into the pool directory `opts.dir`; nothing is
 * rewritten until the first change.
 */
export async function adoptPoolFiles(opts: { dir: string; metadata: string; data: string; force?: boolean }): Promise<void> {
  const metadata = resolve(opts.metadata);
  const data = resolve(opts.data);
  // A live pool's files are never taken, --force or not.
  for (const [path, role] of [[metadata, 'metadata'], [data, 'data']] as const) {
    const f = await FileBlockFile.open(path, { readOnly: true });
    try {
      await lockPoolFile(f, role, `adopt ${path}`);
    } finally {
      await f.close();
    }
  }
  const probe = await FileBlockFile.open(metadata, { readOnly: true });
  let need: number;
  try {
    const md = await ThinMetadata.open(probe, { readOnly: true });
    need = md.nrDataBlocks * md.blockBytes;
  } finally {
    await probe.close();
  }
  const dataSize = (await stat(data)).size;
  if (dataSize < need) throw new RangeError(`Cannot adopt ${data}: it holds ${dataSize} bytes but the metadata maps ${need} (the kernel would refuse it too)`);
  await mkdir(opts.dir, { recursive: true });
  await checkEmpty(opts.dir, 'adopt into', 'a pool');
  const me = await poolIdentity(opts.dir);
  for (const [path, role] of [[metadata, 'metadata'], [data, 'data']] as const) {
    const owner = await ownerOf(path, role);
    if (owner && owner !== me && !opts.force) {
      throw new BusyError(`Cannot adopt ${path} into ${opts.dir}: it is the ${role} file of pool ${owner} (closed now), and two pools on the same files overwrite each other's devices; give --force to move the files to ${opts.dir} (pool ${owner} then refuses to open them)`, { owner, role }, 'ELOCKED');
    }
  }
  await symlink(metadata, join(opts.dir, 'metadata'));
  await symlink(data, join(opts.dir, 'data'));
  // The files are this directory's now (with --force: no longer the old owner's).
  await markOwner(metadata, me);
  await markOwner(data, me);
}

/** Deletes a pool directory's files (the pool must not be open). */
export async function destroyPoolFiles(dir: string): Promise<void> {
  const lock = await PoolLock.acquire(dir);
  try {
    for (const f of POOL_FILES) await rm(join(dir, f), { force: true });
  } finally {
    await lock.release();
  }
  await rm(join(dir, 'lock'), { force: true });
}
