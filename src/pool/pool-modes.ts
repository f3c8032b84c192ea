/**
 * A pool's mode and the metadata-full guard (the kernel's pool modes in `dm-thin.c`): `rw`;
 * `out-of-data-space` once an allocation finds no free block (writes into provisioned blocks
 * still work; extending the pool ends it); `ro` when the metadata device fills up or the
 * metadata carries NEEDS_CHECK (the open transaction is dropped and NEEDS_CHECK set, never a
 * half-written transaction), and likewise when a metadata read, write or sync fails in a change
 * or a commit (the kernel's `metadata_operation_failed`: abort, needs_check, read-only); `fail`
 * when even that cannot be done, or after damage found in a change.
 */
import { IoError, NoSpaceError, ReadOnlyError, ThinpoolError } from '../errors.js';
import { MetadataSpaceError } from '../pdata/transaction-manager.js';
import type { ThinMetadata } from '../thin/metadata.js';
import type { PoolMode } from './volume-host.js';

/** A change of the pool's mode, or of the host file system's room for data, with why. */
export interface PoolEvent {
  kind: 'mode' | 'host-space';
  /** The mode before and after (kind `mode`), or `ok`/`full` (kind `host-space`). */
  from: string;
  to: string;
  /** One line for the log, e.g. `mode rw -> out-of-data-space: ...`. */
  message: string;
}

/** Errors of the host's I/O (EIO, ENOSPC, ...), as opposed to damage or bugs. */
const IO_CODES = new Set(['EIO', 'ENOSPC', 'EDQUOT', 'EROFS', 'EFBIG', 'ENXIO', 'EBADF']);

function isIoFailure(err: unknown): boolean {
  const e = err as { code?: string; data?: { errno?: string } } | null;
  if (!e) return false;
  return IO_CODES.has(e.code ?? '') || IO_CODES.has(e.data?.errno ?? '');
}

export class PoolModes {
  private value: PoolMode;
  private hostFullValue = false;
  /** Told about every mode change and host-space change (the daemon logs them). */
  readonly listeners = new Set<(e: PoolEvent) => void>();

  /** `onAbort` runs after a dropped transaction (metadata full, a failed metadata I/O) set needs_check: the layers above put their state back. */
  constructor(private readonly md: ThinMetadata, private readonly onAbort?: () => Promise<void>) {
    this.value = md.needsCheck ? 'ro' : 'rw';
  }

  get mode(): PoolMode {
    return this.value;
  }

  /** Changes the mode, telling the listeners when it is a change; `why` ends the log line. */
  change(to: PoolMode, why: string): void {
    const from = this.value;
    if (from === to) return;
    this.value = to;
    this.emit({ kind: 'mode', from, to, message: `mode ${from} -> ${to}: ${why}` });
  }

  /** True since a data write found the host file system full, until one found room again. */
  get hostFull(): boolean {
    return this.hostFullValue;
  }

  /** Set once an acknowledged data write failed (see {@link writeLost}): what every later commit fails with. */
  lostWrite: IoError | undefined;

  /** An acknowledged data write failed: read-only from now on, and every commit fails (the first failure is kept). */
  writeLost(what: string, err: unknown): void {
    const e = err as { code?: string } | null;
    this.lostWrite ??= new IoError(`Cannot make the pool's writes durable: ${what}; the pool is read-only until it is reopened`, { errno: e?.code }, { cause: err });
    this.change('ro', what);
  }

  /** Records whether the host had room for the last data write that needed new host blocks. */
  hostSpace(full: boolean, path: string): void {
    if (full === this.hostFullValue) return;
    this.hostFullValue = full;
    this.emit(full
      ? { kind: 'host-space', from: 'ok', to: 'full', message: `host file system full: ${path} cannot grow; writes that need new space fail with ENOSPC, the rest of the pool works on` }
      : { kind: 'host-space', from: 'full', to: 'ok', message: `host file system has room again: writes to ${path} that need new space succeed again` });
  }

  private emit(e: PoolEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch {
        // a listener's failure is not the pool's
      }
    }
  }

  /** True in `ro` and `fail`: nothing is committed and no change is accepted. */
  get frozen(): boolean {
    return this.value === 'ro' || this.value === 'fail';
  }

  /** Fails with a ReadOnlyError naming `action` unless the pool accepts changes. */
  refuseChanges(action: string): void {
    if (!this.frozen) return;
    const why = this.md.needsCheck ? 'needs_check is set (run thinpool pool check)' : `the pool is in ${this.value} mode`;
    throw new ReadOnlyError(`Cannot ${action}: ${why}`, { mode: this.value }, this.md.needsCheck ? 'ENEEDSCHECK' : 'EREADONLY');
  }

  /**
   * Runs a metadata change; when the metadata device fills up the transaction is dropped, the
   * pool turns read-only and needs_check is set (never a half-written transaction).
   */
  async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof MetadataSpaceError) {
        await this.failMetadataFull();
        throw new NoSpaceError(`Cannot change the metadata: the metadata device is full (${this.md.nrMetadataBlocks} blocks); uncommitted changes were dropped, the pool is read-only and needs_check is set (extend the metadata and run thinpool pool check)`, { metadata: true });
      }
      if (this.md.hasChanges && (err as { code?: string }).code === 'ECORRUPT') this.change('fail', `a metadata change found damage: ${(err as Error).message}`);
      // Only metadata calls run here: an I/O failure may have left the transaction half-changed.
      else if (this.md.hasChanges && isIoFailure(err)) {
        await this.failMetadataIo('a metadata change', err);
        throw this.asPoolError(err, 'change the metadata');
      }
      throw err;
    }
  }

  /** A commit failed with `err`: metadata full turns the pool read-only, anything else to `fail`. Always throws. */
  async commitFailed(err: unknown): Promise<never> {
    if (err instanceof MetadataSpaceError) {
      await this.failMetadataFull();
      throw new NoSpaceError(`Cannot commit: the metadata device is full (${this.md.nrMetadataBlocks} blocks); the pool is read-only and needs_check is set`, { metadata: true });
    }
    if (isIoFailure(err)) {
      await this.failMetadataIo('the commit', err);
      throw this.asPoolError(err, 'commit');
    }
    this.change('fail', `the commit failed: ${(err as Error)?.message ?? String(err)}`);
    throw err;
  }

  /** A thinpool error for an I/O failure: ENOSPC/EDQUOT as a NoSpaceError, the rest as an IoError, saying what became of the pool. */
  private asPoolError(err: unknown, action: string): ThinpoolError {
    const e = err as Error & { code?: string };
    const state = this.value === 'ro' ? '; the pool is read-only and needs_check is set (run thinpool pool check)' : `; the pool is in ${this.value} mode`;
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return new NoSpaceError(`Cannot ${action}: the host file system refused a metadata write (${e.message})${state}`, { metadata: true });
    if (err instanceof IoError) return new IoError(`${err.message.replace(/\.$/, '')}${state}`, err.data, { cause: err });
    if (err instanceof ThinpoolError) return err;
    return new IoError(`Cannot ${action}: ${e.message}${state}`, { errno: e.code }, { cause: err });
  }

  /**
   * A metadata read, write or sync failed in `what`: like the kernel, drop the open transaction,
   * set needs_check and turn read-only (reads go on; `pool check` then clears it). When even that
   * fails, the pool goes to `fail`.
   */
  private async failMetadataIo(what: string, err: unknown): Promise<void> {
    const why = (err as Error)?.message ?? String(err);
    try {
      await this.md.abort();
      await this.md.setNeedsCheck();
    } catch (again) {
      this.change('fail', `${what} failed (${why}) and so did dropping its transaction: ${(again as Error)?.message ?? String(again)}`);
      return;
    }
    this.change('ro', `${what} failed: ${why}; uncommitted changes were dropped and needs_check is set`);
    await this.onAbort?.().catch(() => undefined);
  }

  private async failMetadataFull(): Promise<void> {
    this.change('ro', `the metadata device is full (${this.md.nrMetadataBlocks} blocks); uncommitted changes were dropped and needs_check is set`);
    await this.md.abort();
    await this.md.setNeedsCheck();
    await this.onAbort?.().catch(() => undefined);
  }
}
