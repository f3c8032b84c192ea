/**
 * Who uses which device of a pool (exports, attachments): a used device cannot be removed.
 */
export class DeviceUsers {
  private readonly counts = new Map<number, number>();

  /** Marks device `id` as used; returns the release function (calling it again does nothing). */
  use(id: number): () => void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.counts.get(id) ?? 1) - 1;
      if (n) this.counts.set(id, n);
      else this.counts.delete(id);
    };
  }

  /** How many users device `id` has (0 when none). */
  count(id: number): number {
    return this.counts.get(id) ?? 0;
  }

  /** True while something uses device `id`. */
  has(id: number): boolean {
    return (this.counts.get(id) ?? 0) > 0;
  }

  /** Devices in use and how many users each has. */
  entries(): Array<[id: number, users: number]> {
    return [...this.counts.entries()];
  }
}
