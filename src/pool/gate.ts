/**
 * A shared/exclusive gate for pool I/O: every read, write and discard holds it shared from its
 * mapping lookup until its data I/O completes; commits, snapshots and aborts hold it exclusive,
 * so they see no provisioning half done and no read of a block that could be freed under it.
 * A waiting exclusive holder stops new shared entries (no starvation of commits); when it
 * leaves, the shared waiters go first.
 */
export class Gate {
  private shared = 0;
  private exclusive = false;
  private readonly sharedWaiters: Array<() => void> = [];
  private readonly exclusiveWaiters: Array<() => void> = [];

  /** Enters shared; resolves at once (no extra tick) when nothing exclusive is held or waiting. */
  enterShared(): Promise<void> | undefined {
    if (!this.exclusive && this.exclusiveWaiters.length === 0) {
      this.shared++;
      return undefined;
    }
    return new Promise((resolve) => this.sharedWaiters.push(resolve));
  }

  /** Enters shared only if that needs no wait; true when entered. */
  tryEnterShared(): boolean {
    if (this.exclusive || this.exclusiveWaiters.length) return false;
    this.shared++;
    return true;
  }

  leaveShared(): void {
    this.shared--;
    if (this.shared === 0) this.admit();
  }

  enterExclusive(): Promise<void> | undefined {
    if (!this.exclusive && this.shared === 0) {
      this.exclusive = true;
      this.preferShared = true;
      return undefined;
    }
    return new Promise((resolve) => this.exclusiveWaiters.push(resolve));
  }

  leaveExclusive(): void {
    this.exclusive = false;
    this.admit();
  }

  /** Runs `fn` holding the gate exclusively. */
  async exclusively<T>(fn: () => Promise<T>): Promise<T> {
    await this.enterExclusive();
    try {
      return await fn();
    } finally {
      this.leaveExclusive();
    }
  }

  /** Runs `fn` holding the gate shared. */
  async sharedly<T>(fn: () => Promise<T>): Promise<T> {
    const w = this.enterShared();
    if (w) await w;
    try {
      return await fn();
    } finally {
      this.leaveShared();
    }
  }

  private admit(): void {
    if (this.exclusive) return;
    const sharedFirst = this.sharedWaiters.length > 0 && this.preferShared;
    if (this.shared === 0 && this.exclusiveWaiters.length && !sharedFirst) {
      this.exclusive = true;
      this.preferShared = true;
      this.exclusiveWaiters.shift()!();
      return;
    }
    if (this.sharedWaiters.length && (this.exclusiveWaiters.length === 0 || sharedFirst)) {
      this.preferShared = false;
      const ws = this.sharedWaiters.splice(0);
      this.shared += ws.length;
      for (const w of ws) w();
    }
  }

  /** Set when an exclusive holder is admitted: shared entries that waited for it go before the next one. */
  private preferShared = false;

  /** True while anything holds or waits for the gate. */
  get busy(): boolean {
    return this.exclusive || this.shared > 0 || this.sharedWaiters.length > 0 || this.exclusiveWaiters.length > 0;
  }
}
