/**
 * When a pool commits and syncs its data: group commit (callers arriving while a commit waits
 * for the gate join it, like the kernel batching FUA bios into one metadata commit) and shared
 * data syncs (a caller arriving during an fdatasync that does not cover its writes waits for the
 * next one). Data syncs are skipped when no data write completed since the last one (the data
 * file counts its completed writes), so a commit syncs the data file at most once, in its first
 * round. The commit itself (data sync, metadata, catalog, superblock) is the pool's.
 */
import { IoError, NoSpaceError, ThinpoolError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import type { Gate } from './gate.js';

const RESOLVED: Promise<void> = Promise.resolve();

export class CommitScheduler {
  private queuedCommit: Promise<void> | undefined;
  private running: { promise: Promise<void>; at: number | undefined } | undefined;
  private syncNext: Promise<void> | undefined;
  /** The data file's completed-write count the last finished sync covered. */
  private syncedThrough: number;

  /** `commitLocked` commits with the gate already held exclusively. */
  constructor(private readonly gate: Gate, private readonly dataFile: BlockFile, private readonly commitLocked: () => Promise<void>) {
    // Nothing written through this file yet needs a sync of ours.
    this.syncedThrough = dataFile.completedWrites ?? -1;
  }

  /**
   * Commits. While I/O holds the gate, the data is synced first, outside the gate, so reads and
   * writes are not stalled behind a long fdatasync (the commit's own round then syncs only what
   * completed since); on an idle gate the commit starts at once and syncs the data in its first
   * round, beside the metadata blocks and the catalog.
   */
  commit(): Promise<void> {
    // Group commit: callers arriving while a commit waits for the gate join it (their writes
    // completed before it starts, so it covers them).
    if (this.queuedCommit) return this.queuedCommit;
    const run = () =>
      this.gate.exclusively(() => {
        this.queuedCommit = undefined;
        return this.commitLocked();
      });
    const p = this.gate.busy ? this.syncData().then(run) : run();
    this.queuedCommit = p;
    p.catch(() => undefined).finally(() => {
      if (this.queuedCommit === p) this.queuedCommit = undefined;
    });
    return p;
  }

  /** True when every data write completed so far is durable (false when the file does not count its writes). */
  dataClean(): boolean {
    const n = this.dataFile.completedWrites;
    return n !== undefined && n === this.syncedThrough;
  }

  /**
   * Makes completed data writes durable (fdatasync of the data file). Concurrent callers share
   * syncs: a running sync that covers every completed write is joined, otherwise the caller waits
   * for the next one; nothing is synced when every completed write already is.
   */
  syncData(): Promise<void> {
    const now = this.dataFile.completedWrites;
    if (now !== undefined && now === this.syncedThrough) return RESOLVED;
    if (!this.running) {
      const at = now;
      const promise = this.dataFile.sync().then(
        () => {
          if (at !== undefined && at > this.syncedThrough) this.syncedThrough = at;
        },
      ).catch(syncFailed(this.dataFile.path)).finally(() => {
        this.running = undefined;
      });
      this.running = { promise, at };
      return promise;
    }
    if (now !== undefined && this.running.at === now) return this.running.promise;
    this.syncNext ??= this.running.promise.catch(() => undefined).then(() => {
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
