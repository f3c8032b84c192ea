/**
 * A pool's data space: allocation of data blocks for writes, auto-extension of the capacity
 * under the low-water mark (growing the data file and the data space map), and returning freed
 * blocks' space to the host (hole punching after the commit that freed them).
 */
import { NoSpaceError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import type { ThinMetadata } from '../thin/metadata.js';
import { formatSize } from '../units.js';
import type { Catalog } from './catalog.js';
import type { PoolModes } from './pool-modes.js';

export class DataSpace {
  constructor(
    private readonly dir: string,
    private readonly md: ThinMetadata,
    private readonly dataFile: BlockFile,
    private readonly catalog: Catalog,
    private readonly modes: PoolModes,
  ) {}

  private get blockSize(): number {
    return this.md.blockBytes;
  }

  /**
   * Allocates `n` data blocks for a write, auto-extending the pool under its low-water mark.
   * Fails with {@link NoSpaceError} (and mode out-of-data-space) when they are not there.
   */
  async allocate(n: number): Promise<number[]> {
    const md = this.md;
    const s = this.catalog.settings;
    if (s.autoExtend && md.freeDataBlocks - n < s.lowWaterMarkBlocks && md.nrDataBlocks < s.autoExtendMaxBlocks) {
      await this.grow(Math.min(s.autoExtendMaxBlocks, md.nrDataBlocks + Math.max(s.autoExtendStepBlocks, n)));
      this.catalog.markDirty();
    }
    const got = await this.modes.guard(() => md.allocDataBlocks(n));
    if (got.length < n) {
      if (got.length) await this.modes.guard(() => md.releaseDataBlocks(got));
      this.modes.change('out-of-data-space', `an allocation of ${n} data block${n === 1 ? '' : 's'} found ${got.length} free (${md.nrDataBlocks} blocks in the pool); writes that need new blocks fail with ENOSPC until blocks are freed or the pool is extended`);
      throw new NoSpaceError(`Cannot allocate ${n} data block${n === 1 ? '' : 's'}: the pool is out of data space (${md.nrDataBlocks} blocks of ${formatSize(this.blockSize)} all in use); extend it with thinpool pool extend --data-size`, { pool: this.dir });
    }
    if (this.modes.mode === 'out-of-data-space') this.modes.change('rw', 'data blocks are free again');
    return got;
  }

  /** Grows the capacity to `n` blocks (the data file first, then the space map); never shrinks. */
  async grow(n: number): Promise<void> {
    if (n <= this.md.nrDataBlocks) return;
    await this.dataFile.truncate(n * this.blockSize);
    await this.modes.guard(() => this.md.resizeData(n));
  }

  /** Returns the space of freed data blocks to the host, one hole per run of neighbours. */
  async punch(freed: number[]): Promise<void> {
    const bs = this.blockSize;
    freed.sort((a, b) => a - b);
    let i = 0;
    while (i < freed.length) {
      let j = i + 1;
      while (j < freed.length && freed[j] === freed[j - 1]! + 1) j++;
      await this.dataFile.punchHole(freed[i]! * bs, (j - i) * bs);
      i = j;
    }
  }
}
