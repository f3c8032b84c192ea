/**
 * A pool's mode and the metadata-full guard (the kernel's pool modes in `dm-thin.c`): `rw`;
 * `out-of-data-space` once an allocation finds no free block (writes into provisioned blocks
 * still work; extending the pool ends it); `ro` when the metadata device fills up or the
 * metadata carries NEEDS_CHECK (the open transaction is dropped and NEEDS_CHECK set, never a
 * half-written transaction); `fail` after a metadata I/O error or damage in a change.
 */
import { NoSpaceError, ReadOnlyError } from '../errors.js';
import { MetadataSpaceError } from '../pdata/transaction-manager.js';
import type { ThinMetadata } from '../thin/metadata.js';
import type { PoolMode } from './volume-host.js';

export class PoolModes {
  private value: PoolMode;

  constructor(private readonly md: ThinMetadata) {
    this.value = md.needsCheck ? 'ro' : 'rw';
  }

  get mode(): PoolMode {
    return this.value;
  }

  set mode(m: PoolMode) {
    this.value = m;
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
      if (this.md.hasChanges && (err as { code?: string }).code === 'ECORRUPT') this.value = 'fail';
      throw err;
    }
  }

  /** A commit failed with `err`: metadata full turns the pool read-only, anything else to `fail`. Always throws. */
  async commitFailed(err: unknown): Promise<never> {
    if (err instanceof MetadataSpaceError) {
      await this.failMetadataFull();
      throw new NoSpaceError(`Cannot commit: the metadata device is full (${this.md.nrMetadataBlocks} blocks); the pool is read-only and needs_check is set`, { metadata: true });
    }
    this.value = 'fail';
    throw err;
  }

  private async failMetadataFull(): Promise<void> {
    this.value = 'ro';
    await this.md.abort();
    await this.md.setNeedsCheck();
  }
}
