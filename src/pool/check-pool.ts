/**
 * The check of a pool directory (`thinpool pool check`): a pool nobody has open is checked from
 * its files under the pool's lock, which works on metadata too damaged to open; a pool another
 * process owns is checked by that owner (the caller says how to reach it); a pool whose lock
 * cannot be taken for lack of rights (someone else's pool, a read-only mount) is checked from its
 * files as they are.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { NotFoundError } from '../errors.js';
import { FileBlockFile } from '../io/block-file.js';
import { checkMetadata } from '../thin/check.js';
import type { CheckReport } from '../thin/check-issues.js';
import { lockPoolFile } from './file-owner.js';
import { PoolLock } from './pool-lock.js';

/**
 * Checks a pool's metadata file without opening the pool: for a pool nobody owns or a damaged
 * one. With `lockFile` the file's flock is taken for the check, so a file that another pool
 * directory's owner has open (a link to it) is refused naming that owner, not read mid-change.
 */
export async function checkPoolFiles(dir: string, lockFile = false): Promise<CheckReport> {
  let file: FileBlockFile;
  try {
    file = await FileBlockFile.open(join(dir, 'metadata'), { readOnly: true });
  } catch {
    throw new NotFoundError(`Cannot check pool ${dir}: no metadata file there`, { dir });
  }
  try {
    if (lockFile) await lockPoolFile(file, 'metadata', `check pool ${dir}`);
    return await checkMetadata(file);
  } finally {
    await file.close();
  }
}

/**
 * Checks the pool in `dir`: from its files under its lock, or through `ifOwned` when another
 * process holds the lock.
 * @throws NotFoundError when `dir` holds no pool.
 */
export async function checkPoolDir(dir: string, ifOwned: () => Promise<CheckReport>): Promise<CheckReport> {
  try {
    await stat(join(dir, 'metadata'));
  } catch {
    throw new NotFoundError(`Cannot check ${dir}: no pool there (no metadata file)`, { dir });
  }
  let lock: PoolLock | undefined;
  try {
    lock = await PoolLock.acquire(dir);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ELOCKED' || code === 'EBUSY') return ifOwned();
    // No right to take the lock (someone else's pool, a read-only mount): check the files as they are.
    if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS') throw err;
  }
  try {
    return await checkPoolFiles(dir, lock !== undefined);
  } finally {
    await lock?.release();
  }
}
