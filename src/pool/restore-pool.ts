/**
 * `thin_restore` for a pool directory: builds new metadata from XML under the pool's lock into a
 * temporary file sized for the XML, makes sure the data file covers the restored capacity, then
 * renames the new metadata into place and syncs the directory, so a failure at any point leaves
 * the old metadata (or none) and never a half-restored file. The catalog reconciles the restored
 * devices (unnamed, `id:N`) the next time the pool opens.
 *
 * @example
 * const { summary } = await restorePool('/srv/pool', createReadStream('meta.xml'), { dataSize: 100 * GiB });
 */
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ExistsError, UsageError } from '../errors.js';
import { FileBlockFile } from '../io/block-file.js';
import { estimateMetadataBytes } from '../thin/metadata-size.js';
import { type RestoreSummary, type XmlInput, restoreXml } from '../thin/restore.js';
import { METADATA_BLOCK_SIZE, formatSize } from '../units.js';
import { PoolLock } from './pool-lock.js';

export interface RestorePoolOptions {
  /** Data capacity in bytes (default: the XML's `nr_data_blocks`; it may only grow it). */
  dataSize?: number;
  /** Metadata file size in bytes (default: the larger of the current file and the estimate for the data size). */
  metadataSize?: number;
  /** Replace the metadata of an existing pool (its data file is kept). */
  force?: boolean;
  /** Called with the bytes of input read so far. */
  onProgress?: (bytes: number) => void;
}

export interface RestorePoolResult {
  summary: RestoreSummary;
  /** The data file did not exist and was created empty (the mappings read zeros until the original data file is put there). */
  createdData: boolean;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function* counted(src: XmlInput, onBytes: (n: number) => void): AsyncGenerator<string | Uint8Array> {
  let n = 0;
  for await (const c of src as AsyncIterable<string | Uint8Array>) {
    n += typeof c === 'string' ? Buffer.byteLength(c) : c.length;
    onBytes(n);
    yield c;
  }
}

/**
 * Restores the XML `input` (thin_dump 0.9 or 1.x, or ours) as the metadata of the pool in `dir`
 * (which must not be open). Creates `dir` and an empty data file when missing.
 * @throws ExistsError when `dir` holds a pool and `force` is not set; UsageError for XML that does
 * not fit the sizes asked for (or is invalid, see {@link restoreXml}); BusyError when the pool is open.
 */
export async function restorePool(dir: string, input: XmlInput, opts: RestorePoolOptions = {}): Promise<RestorePoolResult> {
  await mkdir(dir, { recursive: true });
  const metaPath = join(dir, 'metadata');
  if ((await exists(metaPath)) && !opts.force) {
    throw new ExistsError(`Cannot restore ${dir}: it already holds a pool; add --force to replace its metadata (the data file is kept)`, { dir });
  }
  const lock = await PoolLock.acquire(dir);
  const tmp = join(dir, 'metadata.restore');
  try {
    const oldMetaBytes = (await exists(metaPath)) ? (await stat(metaPath)).size : 0;
    // The sizes follow the XML's superblock, read by the restore itself before it writes anything.
    const size = (xml: { dataBlockSize: number; nrDataBlocks: number }) => {
      let nrDataBlocks: number | undefined;
      if (opts.dataSize !== undefined) {
        nrDataBlocks = Math.floor(opts.dataSize / (xml.dataBlockSize * 512));
        if (xml.nrDataBlocks > nrDataBlocks) {
          throw new UsageError(`Cannot restore ${dir}: --data-size ${formatSize(opts.dataSize)} holds ${nrDataBlocks} blocks, fewer than the XML's nr_data_blocks ${xml.nrDataBlocks}`);
        }
      } else if (xml.nrDataBlocks === 0) {
        throw new UsageError(`Cannot restore ${dir}: the XML has nr_data_blocks="0" (a thin_dump -m of a metadata snapshot); give --data-size`);
      }
      const metaBytes = opts.metadataSize ?? Math.max(estimateMetadataBytes(nrDataBlocks ?? xml.nrDataBlocks), oldMetaBytes);
      return { nrMetadataBlocks: Math.floor(metaBytes / METADATA_BLOCK_SIZE), ...(nrDataBlocks !== undefined ? { nrDataBlocks } : {}) };
    };
    await rm(tmp, { force: true });
    const file = await FileBlockFile.open(tmp, { create: true });
    let summary: RestoreSummary;
    try {
      summary = await restoreXml(opts.onProgress ? counted(input, opts.onProgress) : input, file, { size });
      await file.sync();
    } finally {
      await file.close();
    }
    const dataPath = join(dir, 'data');
    const want = summary.nrDataBlocks * summary.dataBlockSize * 512;
    const createdData = !(await exists(dataPath));
    const fh = await open(dataPath, createdData ? 'w' : 'r+');
    try {
      if ((await fh.stat()).size < want) await fh.truncate(want);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, metaPath);
    const dh = await open(dir, 'r');
    await dh.sync().catch(() => undefined);
    await dh.close();
    return { summary, createdData };
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await lock.release();
  }
}
