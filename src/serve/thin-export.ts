/**
 * The adapter from a thin device ({@link ThinVolume}) to an NBD export: reads come back as data
 * and hole segments, TRIM discards, WRITE_ZEROES unmaps whole blocks (unless NO_HOLE), FLUSH
 * commits the pool (so it covers every connection: CAN_MULTI_CONN holds), and block status
 * reports unprovisioned ranges as hole+zero and provisioned ones as data. A block shared with a
 * snapshot reports as data, though writing it needs a new block.
 */
import { UnsupportedError } from '../errors.js';
import type { AllocationExtent, NbdExport, ReadSegment, WriteZeroesOptions } from '../nbd/export.js';
import type { ThinVolume, VolumeSegment } from '../pool/thin-volume.js';

export class ThinExport implements NbdExport {
  /**
   * @param earlyReplies pass the server's `accepted` on to the volume: a write in place into an
   *   exclusive block is replied to once it is queued (see `ThinVolume.write`); false: every
   *   write is replied to when its data write completed.
   */
  constructor(readonly volume: ThinVolume, readonly name: string, private readonly forceReadOnly = false, private readonly earlyReplies = true) {}

  get size(): number {
    return this.volume.size;
  }

  get readOnly(): boolean {
    return this.forceReadOnly || this.volume.readOnly;
  }

  get description(): string {
    return `thinpool device ${this.volume.name} (id ${this.volume.id})`;
  }

  read(offset: number, length: number): Promise<ReadSegment[]> {
    return this.volume.readSegments(offset, length);
  }

  sendNow(offset: number, length: number, send: (fd: number, positions: number[], lengths: number[]) => void): boolean {
    return this.volume.sendNow(offset, length, send);
  }

  releaseRead(segments: ReadSegment[]): void {
    this.volume.releaseSegments(segments as VolumeSegment[]);
  }

  write(offset: number, data: Uint8Array, fua: boolean, accepted?: () => void): Promise<void> {
    return this.volume.write(offset, data, this.earlyReplies && accepted ? { fua, accepted } : { fua });
  }

  flush(): Promise<void> {
    return this.volume.flush();
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.volume.discard(offset, length, { fua });
  }

  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    if (opts.fastZero && opts.noHole) {
      throw new UnsupportedError('Cannot zero fast with NO_HOLE: the blocks would have to be written');
    }
    await this.volume.writeZeroes(offset, length, { noHole: opts.noHole, fua: opts.fua });
  }

  async blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    const ext = await this.volume.extents(offset, length);
    return ext.map((e) => ({ length: e.length, hole: !e.mapped, zero: !e.mapped }));
  }

  async cache(): Promise<void> {
    // Reads go to the host page cache already; nothing to prefetch.
  }
}
