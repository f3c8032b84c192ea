/**
 * Writes a volume acknowledged before their data write completed (`ThinVolume.write`'s
 * `accepted`), by virtual block: what a read of those blocks waits for first, so a read issued
 * after the acknowledgement sees the bytes.
 */
const noop = (): void => undefined;

export class AcknowledgedWrites {
  private readonly byBlock = new Map<number, Promise<void>>();

  /** True when a write into `vblock` is in flight (cheap: the synchronous read path asks it). */
  has(vblock: number): boolean {
    return this.byBlock.size !== 0 && this.byBlock.has(vblock);
  }

  /** Records `done` (the data write) for `vblocks`; returns the function that forgets them once it settled. */
  add(vblocks: readonly number[], done: Promise<unknown>): () => void {
    const settled = done.then(noop, noop);
    for (const vb of vblocks) this.byBlock.set(vb, settled);
    return () => {
      for (const vb of vblocks) if (this.byBlock.get(vb) === settled) this.byBlock.delete(vb);
    };
  }

  /**
   * Starts `write` (the data write into `vblocks`), records it, calls `accepted`, and resolves or
   * rejects with the write; a failure after `accepted` returned goes to `lost` first. Whatever
   * `accepted` does, the write is waited for (the caller keeps its locks until it is over).
   */
  async write(write: () => Promise<void>, vblocks: readonly number[], accepted: () => void, lost: (err: unknown) => void): Promise<void> {
    const done = write();
    const forget = this.add(vblocks, done);
    let ackFailure: { err: unknown } | undefined;
    try {
      accepted();
    } catch (err) {
      ackFailure = { err };
    }
    try {
      await done;
    } catch (err) {
      if (!ackFailure) lost(err);
      throw err;
    } finally {
      forget();
    }
    if (ackFailure) throw ackFailure.err;
  }

  /** Resolves when no write into virtual blocks `first..last` is in flight; undefined when none is. */
  settled(first: number, last: number): Promise<unknown> | undefined {
    if (this.byBlock.size === 0) return undefined;
    const waits: Promise<void>[] = [];
    if (last - first < this.byBlock.size) {
      for (let vb = first; vb <= last; vb++) {
        const p = this.byBlock.get(vb);
        if (p) waits.push(p);
      }
    } else {
      for (const [vb, p] of this.byBlock) if (vb >= first && vb <= last) waits.push(p);
    }
    return waits.length === 0 ? undefined : waits.length === 1 ? waits[0] : Promise.all(waits);
  }
}
