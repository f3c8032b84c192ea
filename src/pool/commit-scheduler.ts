/**
 * When a pool commits and syncs its data: group commit (callers arriving while a commit waits
 * for the gate join it, like the kernel batching FUA bios into one metadata commit) and shared
 * data syncs (a caller arriving during an fdatasync waits for the next one, which covers its
 * writes). The commit itself (data sync, metadata, catalog, superblock) is the pool's.
 */
import { IoError, NoSpaceError, ThinpoolError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import type { Gate } from './gate.js';

export class CommitScheduler {
  private queuedCommit: Promise<void> | undefined;
  private syncRunning: Promise<void> | undefined;
  private syncNext: Promise<void> | undefined;

  /** `commitLocked` commits with the gate already held exclusively. */
  constructor(private readonly gate: Gate, private readonly dataFile: BlockFile, private readonly commitLocked: () => Promise<void>) {}

  /** Commits: data synced, then the gate taken exclusively for the metadata commit. */
  commit(): Promise<void> {
    // Group commit: callers arriving while a commit waits for the gate join it (their writes
    // completed before it starts, so it covers them).
    if (this.queuedCommit) return this.queuedCommit;
    // Sync the data before taking the gate, so I/O is not stalled behind a long fdatasync; the
    // sync inside the commit then has little left to do.
    const p = this.syncData().then(() =>
      this.gate.exclusively(() => {
        this.queuedCommit = undefined;
        return this.commitLocked();
      }),
    );
    this.queuedCommit = p;
    p.catch(() => undefined).finally(() => {
      if (this.queuedCommit === p) this.queuedCommit = undefined;
    });
    return p;
  }

  /**
   * Makes completed data writes durable (fdatasync of the data file). Concurrent callers share
   * syncs: one that arrives during a sync waits for the next one, which covers its writes.
   */
  syncData(): Promise<void> {
    if (!this.syncRunning) {
      this.syncRunning = this.dataFile.sync().catch(syncFailed(this.dataFile.path)).finally(() => {
        this.syncRunning = undefined;
      });
      return this.syncRunning;
    }
    this.syncNext ??= this.syncRunning.catch(() => undefined).then(() => {
      this.syncNext = undefined;
      return this.syncData();
    });
    return this.syncNext;
  }
}

/**
 * A failed data sync as a thinpool error: the host's ENOSPC/EDQUOT (a thin or network file
 * system that could not store written data) as a NoSpaceError, anything else as an IoError.
 * Either way the writes since the last sync may not be stored, and nothing is committed.
 */
function syncFailed(path: string): (err: unknown) => never {
  return (err) => {
    if (err instanceof ThinpoolError) throw err;
    const e = err as NodeJS.ErrnoException;
    const msg = `Cannot sync ${path}: ${e?.message ?? String(err)}; data written since the last sync may not be stored, nothing was committed`;
    if (e?.code === 'ENOSPC' || e?.code === 'EDQUOT') throw new NoSpaceError(msg, { path });
    throw new IoError(msg, { path, errno: e?.code }, { cause: err });
  };
}
