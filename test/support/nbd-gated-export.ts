/** An NbdExport wrapper that can hold calls at a gate or delay them, to test concurrency and shutdown. */
import type { AllocationExtent, NbdExport, ReadSegment, WriteZeroesOptions } from '../../src/nbd/export.js';

export class GatedExport implements NbdExport {
  started = 0;
  completed = 0;
  private gate: Promise<void> | undefined;
  private open: (() => void) | undefined;

  constructor(readonly inner: NbdExport, private readonly delayMs: (op: string, offset: number, length: number) => number = () => 0) {}

  get name(): string {
    return this.inner.name;
  }
  get description(): string | undefined {
    return this.inner.description;
  }
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** Calls made from now on wait until {@link release}. */
  hold(): void {
    if (!this.gate) this.gate = new Promise((resolve) => (this.open = resolve));
  }

  release(): void {
    this.open?.();
    this.gate = undefined;
    this.open = undefined;
  }

  private async around<T>(op: string, offset: number, length: number, fn: () => Promise<T>): Promise<T> {
    this.started++;
    try {
      if (this.gate) await this.gate;
      const ms = this.delayMs(op, offset, length);
      if (ms > 0) await new Promise((r) => setTimeout(r, ms));
      return await fn();
    } finally {
      this.completed++;
    }
  }

  read(offset: number, length: number): Promise<ReadSegment[]> {
    return this.around('read', offset, length, () => this.inner.read(offset, length));
  }
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.around('write', offset, data.length, () => this.inner.write(offset, data, fua));
  }
  flush(): Promise<void> {
    return this.around('flush', 0, 0, () => this.inner.flush());
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.around('trim', offset, length, () => this.inner.trim(offset, length, fua));
  }
  writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    return this.around('writeZeroes', offset, length, () => this.inner.writeZeroes(offset, length, opts));
  }
  blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    return this.around('blockStatus', offset, length, () => this.inner.blockStatus(offset, length));
  }
  cache(offset: number, length: number): Promise<void> {
    return this.around('cache', offset, length, () => this.inner.cache(offset, length));
  }
}
