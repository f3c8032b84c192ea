/**
 * `thinpool pool repair`: {@link repairMetadata} for a pool directory, under the pool's lock and
 * the metadata file's flock. The new metadata goes into a new file (sized like the old one) that
 * must pass the checker before anything else happens; only then is it swapped in, the old file
 * kept as `metadata.bak`. With `output` the new metadata is written there and the pool is left
 * alone (thin_repair -o). The catalog reconciles the devices the next time the pool opens.
 *
 * @example
 * const r = await repairPool('/srv/pool');
 * console.log(`${r.summary.mappings} mappings kept, old metadata in ${r.backup}`);
 */
import { lstat, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CorruptionError, ExistsError, NotFoundError, UsageError } from '../errors.js';
import { FileBlockFile } from '../io/block-file.js';
import { checkMetadata } from '../thin/check.js';
import { type RepairSummary, repairMetadata } from '../thin/repair.js';
import { METADATA_BLOCK_SIZE } from '../units.js';
import { lockPoolFile } from './file-owner.js';
import { PoolLock } from './pool-lock.js';

export interface RepairPoolResult {
  summary: RepairSummary;
  /** Where the repaired metadata is: `DIR/metadata`, or `output`. */
  written: string;
  /** The old metadata after an in-place repair (`DIR/metadata.bak`). */
  backup?: string;
}

/** Smallest metadata the restore formats (ThinMetadata.format's minimum). */
const MIN_METADATA_BLOCKS = 16;

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Repairs the metadata of the pool in `dir` (which must not be open).
 * @throws NotFoundError without a pool; BusyError when it is open; ExistsError when `output` or
 * `metadata.bak` exists; UsageError when the metadata is a link (repair it with `output`);
 * CorruptionError when its superblock cannot be used.
 */
export async function repairPool(dir: string, opts: { output?: string } = {}): Promise<RepairPoolResult> {
  const metaPath = join(dir, 'metadata');
  let st;
  try {
    st = await lstat(metaPath);
  } catch {
    throw new NotFoundError(`Cannot repair ${dir}: no pool there (no metadata file)`, { dir });
  }
  const backup = join(dir, 'metadata.bak');
  if (opts.output !== undefined) {
    if (await exists(opts.output)) throw new ExistsError(`Cannot repair ${dir} into ${opts.output}: it exists, expected a new file`, { path: opts.output });
  } else {
    if (!st.isFile() || st.nlink > 1) {
      throw new UsageError(`Cannot repair ${dir} in place: its metadata is ${st.isSymbolicLink() ? 'a symbolic link' : st.isFile() ? 'a file with other hard links' : 'not a regular file'} (another name would keep the damaged one); repair into a new file with -o FILE`, { dir });
    }
    if (await exists(backup)) throw new ExistsError(`Cannot repair ${dir}: ${backup} exists (an earlier repair's old metadata), expected to keep the old metadata there; move it away first`, { path: backup });
  }
  const lock = await PoolLock.acquire(dir);
  const target = opts.output ?? join(dir, 'metadata.repair');
  let made = false;
  try {
    const src = await FileBlockFile.open(metaPath, { readOnly: true });
    let summary: RepairSummary;
    try {
      await lockPoolFile(src, 'metadata', `repair pool ${dir}`);
      const nrMetadataBlocks = Math.max(MIN_METADATA_BLOCKS, Math.floor((await src.size()) / METADATA_BLOCK_SIZE));
      if (opts.output === undefined) await rm(target, { force: true });
      const out = await FileBlockFile.open(target, { create: true });
      made = true;
      try {
        summary = await repairMetadata(src, out, { nrMetadataBlocks });
        await out.sync();
        const report = await checkMetadata(out);
        if (!report.ok || report.summary.leaks > 0) {
          throw new CorruptionError(`Cannot repair ${dir}: the new metadata does not check clean (${report.issues.slice(0, 3).map((i) => i.message).join('; ')}); the old metadata is untouched`, { dir });
        }
      } finally {
        await out.close();
      }
    } finally {
      await src.close();
    }
    if (opts.output !== undefined) return { summary, written: opts.output };
    await rename(metaPath, backup);
    try {
      await rename(target, metaPath);
    } catch (err) {
      await rename(backup, metaPath);
      throw err;
    }
    const dh = await open(dir, 'r');
    await dh.sync().catch(() => undefined);
    await dh.close();
    return { summary, written: metaPath, backup };
  } catch (err) {
    if (made) await rm(target, { force: true });
    throw err;
  } finally {
    await lock.release();
  }
}
