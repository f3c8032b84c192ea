/**
 * One pool commit in two sync rounds. Round 1, in flight together: the data file's fdatasync
 * (when writes completed since the last), the metadata blocks written and synced, the catalog's
 * change (a log entry, or a checkpoint) written and synced. Round 2: the superblock written and
 * synced; the commit is durable when it is. Then the freed data blocks are punched. A commit
 * that changed only the catalog is its log entry (beside the data sync). Each step reports its
 * {@link CommitPoint} to the pool's commit hook (the crash and fault tests stop there).
 */
import type { ThinMetadata } from '../thin/metadata.js';
import type { Catalog } from './catalog.js';
import type { CommitScheduler } from './commit-scheduler.js';
import type { DataSpace } from './data-space.js';
import type { PoolOpenOptions } from './pool-lifecycle.js';
import type { PoolModes } from './pool-modes.js';

/** What a commit reaches: the pool's parts. */
export interface CommitParts {
  md: ThinMetadata;
  catalog: Catalog;
  scheduler: CommitScheduler;
  space: DataSpace;
  modes: PoolModes;
  hook: PoolOpenOptions['commitHook'];
}

/** Commits with the pool's gate already held exclusively (see the file comment). */
export async function commitRounds(p: CommitParts): Promise<void> {
  if (p.modes.frozen) return;
  const { md, catalog, hook } = p;
  let dataDone = p.scheduler.dataClean();
  const syncData = async () => {
    if (dataDone) return;
    dataDone = true;
    await p.scheduler.syncData();
    await hook?.('data-synced');
  };
  const catalogDue = () => catalog.dirty || catalog.tag !== md.superblockChecksum >>> 0;
  let catalogDone = false;
  const writeCatalog = async (csum: number) => {
    catalogDone = true;
    await catalog.commit(csum);
    await hook?.('catalog-written');
  };
  try {
    if (md.hasChanges) {
      await md.commit({
        alongsideBlocks: (csum) => settleAll([syncData(), writeCatalog(csum)]),
        blocksWritten: () => hook?.('metadata-written'),
        afterSuperblock: async (freed) => {
          await hook?.('superblock-written');
          await p.space.punch(freed);
        },
      });
    }
    // Nothing in the metadata to write: the catalog's entry (if any) is the commit.
    await settleAll([syncData(), !catalogDone && catalogDue() ? writeCatalog(md.superblockChecksum) : undefined]);
  } catch (err) {
    await p.modes.commitFailed(err);
  }
}

/** Waits for every promise to settle, then rethrows the first failure (no step is left running behind an error). */
async function settleAll(ps: ReadonlyArray<Promise<void> | undefined>): Promise<void> {
  const rs = await Promise.allSettled(ps);
  for (const r of rs) if (r.status === 'rejected') throw r.reason;
}
