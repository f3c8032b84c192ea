/**
 * Byte-range I/O on a thin device: allocate on write, zeros where unprovisioned, copy-on-write
 * of single blocks shared with a snapshot, discard of whole blocks.
 *
 * Hot path of a write: split into pool blocks; lock those virtual blocks (one operation per
 * block at a time, different blocks in parallel); look each mapping up (from cached metadata
 * without waiting when possible); write in place to exclusive blocks; allocate (one batch) for
 * unmapped and shared ones; write the data (neighbouring data blocks coalesced into one
 * vectored write; the rest of a new block zero-filled, the rest of a copied block read from
 * the shared one); then map all new blocks in one metadata operation. The mapping changes stay
 * in the open transaction until a flush commits them.
 *
 * The volume reaches its pool only through {@link VolumeHost} and its mappings only through its
 * device's {@link ThinDevice} handle; its name, size and read-only flag are set by the pool.
 *
 * @example
 * const vol = pool.volume('web');
 * await vol.write(4096, Buffer.from('hello'));
 * const back = await vol.read(4096, 5);
 */
import { NoSpaceError, NotFoundError, ReadOnlyError } from '../errors.js';
import { NOT_CACHED } from '../pdata/btree.js';
import { isZero } from '../io/zeroes.js';
import { MiB } from '../units.js';
import type { LookupResult, ThinDevice } from '../thin/thin-device.js';
import { AcknowledgedWrites } from './acknowledged-writes.js';
import { type RunSender, sendNow } from './zero-copy-reads.js';
import { BlockLocks } from './block-locks.js';
import { type Piece, writePieces } from './block-writes.js';
import type { VolumeHost, VolumeState } from './volume-host.js';

/** A run of a read: `data === null` is unprovisioned (reads as zeros). */
export interface VolumeSegment {
  offset: number;
  length: number;
  data: Buffer | null;
}

/** One run of allocation status. */
export interface VolumeExtent {
  offset: number;
  length: number;
  mapped: boolean;
}

const RESOLVED: Promise<void> = Promise.resolve();
/** Results of the synchronous read path. */
const NOW_MISS = 0;
const NOW_READ = 1;
const NOW_HOLE = 2;

export class ThinVolume {
  private readonly locks = new BlockLocks();
  /** Writes acknowledged before their data write completed (a write's `accepted`). */
  private readonly acked = new AcknowledgedWrites();
  private removed = false;
  private state: VolumeState;
  readonly id: number;

  /** Made by the pool (`Pool.volume`), which keeps {@link setState} up to date. */
  constructor(private readonly host: VolumeHost, private readonly device: ThinDevice, state: VolumeState) {
    this.id = device.id;
    this.state = { ...state };
  }

  /** Called by the pool when the device's name, size or read-only flag changes. */
  setState(state: VolumeState): void {
    this.state = { ...state };
  }

  /** Called by the pool when the device is deleted: every later call fails. */
  markRemoved(): void {
    this.removed = true;
  }

  /** Device size in bytes. */
  get size(): number {
    if (this.removed) throw new NotFoundError(`Cannot use device id ${this.id}: it was removed`, { id: this.id });
    return this.state.size;
  }

  get blockSize(): number {
    return this.host.blockSize;
  }

  get name(): string {
    return this.state.name;
  }

  get readOnly(): boolean {
    return this.state.readOnly;
  }

  private checkRange(offset: number, length: number, action: string): void {
    if (this.removed) throw new NotFoundError(`Cannot ${action} device id ${this.id}: it was removed`, { id: this.id });
    const size = this.size;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
      throw new RangeError(`Cannot ${action} ${length} bytes at offset ${offset} of ${this.name}: outside the device (${size} bytes)`);
    }
  }

  private checkWritable(action: string): void {
    const mode = this.host.mode;
    if (mode === 'ro' || mode === 'fail') throw new ReadOnlyError(`Cannot ${action} ${this.name}: the pool is in ${mode} mode${this.host.needsCheck ? ' (needs_check is set)' : ''}`, { mode });
    if (this.readOnly) throw new ReadOnlyError(`Cannot ${action} ${this.name}: the device is read-only`, { device: this.name });
  }

  /** The mapping of `vblock`: from cached metadata when it is there, else a promise of the locked lookup. */
  private lookup(vblock: number): LookupResult | undefined | Promise<LookupResult | undefined> {
    const r = this.device.lookupCached(vblock);
    return r === NOT_CACHED ? this.device.lookup(vblock) : r;
  }

  // ---- reads ------------------------------------------------------------------------------

  /** Reads `length` bytes at `offset` (zeros where unprovisioned). */
  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    await this.readInto(out, offset);
    return out;
  }

  /** Fills `buf` from `offset`. */
  readInto(buf: Uint8Array, offset: number): Promise<void> {
    try {
      this.checkRange(offset, buf.length, 'read');
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.inOneBlock(offset, buf.length)) {
      const r = this.readOneBlockNow(offset, buf);
      if (r === NOW_HOLE) buf.fill(0);
      if (r !== NOW_MISS) return RESOLVED;
    }
    return this.readIntoAsync(buf, offset);
  }

  /**
   * The synchronous fast path of a small read: no exclusive holder, the mapping in cached
   * metadata, the bytes in the page cache. {@link NOW_MISS} when any of that fails (the caller
   * takes the asynchronous path), {@link NOW_HOLE} for an unprovisioned block (`buf` untouched).
   */
  private readOneBlockNow(offset: number, buf: Uint8Array): number {
    const gate = this.host.gate;
    if (!gate.tryEnterShared()) return NOW_MISS;
    try {
      const bs = this.blockSize;
      const vb = Math.floor(offset / bs);
      if (this.acked.has(vb)) return NOW_MISS;
      const m = this.device.lookupCached(vb);
      if (m === NOT_CACHED) return NOW_MISS;
      if (!m) return NOW_HOLE;
      return this.host.dataFile.readCached(buf, m.block * bs + (offset - vb * bs)) ? NOW_READ : NOW_MISS;
    } finally {
      gate.leaveShared();
    }
  }

  private async readIntoAsync(buf: Uint8Array, offset: number): Promise<void> {
    if (this.inOneBlock(offset, buf.length)) {
      if (!(await this.readOneBlock(offset, buf))) buf.fill(0);
      return;
    }
    await this.host.gate.sharedly(async () => {
      await this.runs(offset, buf.length, async (pos, len, dataOffset) => {
        const dst = buf.subarray(pos - offset, pos - offset + len);
        if (dataOffset < 0) dst.fill(0);
        else await this.host.dataFile.read(dst, dataOffset);
      });
    });
  }

  /** Reads as segments: provisioned runs with their bytes, unprovisioned runs as `data: null`. */
  async readSegments(offset: number, length: number): Promise<VolumeSegment[]> {
    this.checkRange(offset, length, 'read');
    if (length > 0 && this.inOneBlock(offset, length)) {
      const data = this.host.buffers.get(length);
      const now = this.readOneBlockNow(offset, data);
      if (now === NOW_READ) return [{ offset, length, data }];
      if (now === NOW_MISS && (await this.readOneBlock(offset, data))) return [{ offset, length, data }];
      this.host.buffers.put(data);
      return [{ offset, length, data: null }];
    }
    const out: VolumeSegment[] = [];
    await this.host.gate.sharedly(async () => {
      const reads: Promise<void>[] = [];
      await this.runs(offset, length, async (pos, len, dataOffset) => {
        if (dataOffset < 0) {
          out.push({ offset: pos, length: len, data: null });
          return;
        }
        const data = this.host.buffers.get(len);
        out.push({ offset: pos, length: len, data });
        reads.push(this.host.dataFile.read(data, dataOffset));
      });
      await Promise.all(reads);
    });
    return out;
  }

  private inOneBlock(offset: number, length: number): boolean {
    const bs = this.blockSize;
    return length > 0 && Math.floor(offset / bs) === Math.floor((offset + length - 1) / bs);
  }

  /**
   * The fast path of small reads (one block): gate, lookup, one read into `into`. Resolves true
   * when the block is provisioned, false (nothing read) when it is not.
   */
  private readOneBlock(offset: number, into: Uint8Array): Promise<boolean> {
    const w = this.host.gate.enterShared();
    return w ? w.then(() => this.readOneBlockHeld(offset, into)) : this.readOneBlockHeld(offset, into);
  }

  private async readOneBlockHeld(offset: number, into: Uint8Array): Promise<boolean> {
    try {
      const bs = this.blockSize;
      const vb = Math.floor(offset / bs);
      const w = this.acked.settled(vb, vb);
      if (w) await w;
      let m = this.lookup(vb);
      if (m instanceof Promise) m = await m;
      if (!m) return false;
      await this.host.dataFile.read(into, m.block * bs + (offset - vb * bs));
      return true;
    } finally {
      this.host.gate.leaveShared();
    }
  }

  /** Zero-copy reads: `send` gets the data-file runs of the range now (true), or false (see zero-copy-reads.ts). */
  sendNow(offset: number, length: number, send: RunSender): boolean {
    this.checkRange(offset, length, 'read');
    return sendNow(this.host, this.device, this.acked, offset, length, send);
  }

  /** Gives the buffers of a {@link readSegments} result back for reuse (the caller is done with them). */
  releaseSegments(segments: readonly VolumeSegment[]): void {
    for (const s of segments) if (s.data) this.host.buffers.put(s.data);
  }

  /** Provisioned and unprovisioned runs covering `[offset, offset + length)`. */
  async extents(offset: number, length: number): Promise<VolumeExtent[]> {
    this.checkRange(offset, length, 'map');
    const out: VolumeExtent[] = [];
    await this.host.gate.sharedly(() =>
      this.runs(offset, length, async (pos, len, dataOffset) => {
        const mapped = dataOffset >= 0;
        const last = out[out.length - 1];
        if (last && last.mapped === mapped) last.length += len;
        else out.push({ offset: pos, length: len, mapped });
      }, true),
    );
    return out;
  }

  /**
   * Calls `visit` for maximal runs of the range that are unprovisioned (`dataOffset` -1) or
   * provisioned on consecutive data blocks (`dataOffset` = where the run starts in the data file).
   */
  private async runs(offset: number, length: number, visit: (pos: number, len: number, dataOffset: number) => Promise<void>, anyMapped = false): Promise<void> {
    if (length === 0) return;
    const bs = this.blockSize;
    const end = offset + length;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    const w = this.acked.settled(first, last);
    if (w) await w;
    // The mapped blocks of the range: a few lookups for short ranges, one tree walk for long ones
    // (so a huge, mostly unprovisioned range costs what is mapped, not what is covered).
    const vblocks: number[] = [];
    const blocks: number[] = [];
    if (last - first < 32) {
      for (let vb = first; vb <= last; vb++) {
        let m = this.lookup(vb);
        if (m instanceof Promise) m = await m;
        if (m) {
          vblocks.push(vb);
          blocks.push(m.block);
        }
      }
    } else {
      await this.device.mappings(first, last + 1, (v, m) => {
        vblocks.push(Number(v));
        blocks.push(m.block);
      });
    }
    let i = 0;
    let pos = offset;
    let runStart = offset;
    let runData = -2;
    while (pos < end) {
      const vb = Math.floor(pos / bs);
      let len: number;
      let dataOffset: number;
      if (i < vblocks.length && vblocks[i] === vb) {
        const inBlock = pos - vb * bs;
        len = Math.min(bs - inBlock, end - pos);
        dataOffset = blocks[i]! * bs + inBlock;
        i++;
      } else {
        const next = i < vblocks.length ? vblocks[i]! * bs : end;
        len = Math.min(next, end) - pos;
        dataOffset = -1;
      }
      const expected = runData < 0 ? runData : runData + (pos - runStart);
      const joins = runData !== -2 && (anyMapped ? (dataOffset >= 0) === (runData >= 0) : dataOffset === expected);
      if (!joins) {
        if (runData !== -2) await visit(runStart, pos - runStart, runData);
        runStart = pos;
        runData = dataOffset;
      }
      pos += len;
    }
    await visit(runStart, pos - runStart, runData);
  }

  // ---- writes -----------------------------------------------------------------------------

  /**
   * Writes `data` at `offset`. With `fua` the bytes are durable when this resolves (a data sync
   * when no mapping changed, else a commit).
   *
   * `accepted` (not with `fua`): called as soon as the write is as good as done for everyone
   * else, possibly before its data write completed: a write in place into exclusive blocks calls
   * it once its data write is queued, and from then on every read of those blocks waits for it
   * and a flush covers it (the volatile write cache of a disk: an NBD server replies at that
   * point). Other writes (new or copied blocks) never call it: they are done when the promise
   * resolves. Should the data write fail
   * after `accepted`, the pool turns read-only and its next flush fails (see
   * {@link VolumeHost.writeLost}); the promise still rejects.
   */
  async write(offset: number, data: Uint8Array, opts: { fua?: boolean; accepted?: () => void } = {}): Promise<void> {
    this.checkRange(offset, data.length, 'write');
    this.checkWritable('write to');
    if (data.length === 0) return;
    const changed = await this.writeRange(offset, data.length, data, false, opts.fua ? undefined : opts.accepted);
    if (opts.fua) await this.makeDurable(changed);
  }

  /** Makes a range read as zeros: whole blocks are unmapped unless `noHole`, partial ends written with zeros. */
  async writeZeroes(offset: number, length: number, opts: { noHole?: boolean; fua?: boolean } = {}): Promise<void> {
    this.checkRange(offset, length, 'zero');
    this.checkWritable('zero');
    if (length === 0) return;
    let changed = false;
    if (opts.noHole) {
      for (let pos = offset; pos < offset + length; ) {
        const n = Math.min(16 * MiB, offset + length - pos);
        changed = (await this.writeRange(pos, n, null, true)) || changed;
        pos += n;
      }
    } else {
      const bs = this.blockSize;
      const a = Math.ceil(offset / bs) * bs;
      const b = Math.floor((offset + length) / bs) * bs;
      if (b > a) {
        if (a > offset) changed = (await this.writeRange(offset, a - offset, null, false)) || changed;
        changed = (await this.unmap(a / bs, b / bs)) || changed;
        if (offset + length > b) changed = (await this.writeRange(b, offset + length - b, null, false)) || changed;
      } else {
        changed = await this.writeRange(offset, length, null, false);
      }
    }
    if (opts.fua) await this.makeDurable(changed);
  }

  /** Discards the whole blocks inside the range (dm-thin's rule: partial ends keep their bytes). */
  async discard(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkRange(offset, length, 'discard');
    this.checkWritable('discard');
    const bs = this.blockSize;
    const a = Math.ceil(offset / bs);
    const b = Math.floor((offset + length) / bs);
    const changed = b > a ? await this.unmap(a, b) : false;
    if (opts.fua) await this.makeDurable(changed);
  }

  /** Commits the pool: every completed write and mapping change becomes durable. */
  async flush(): Promise<void> {
    await this.host.commit();
  }

  /** FUA: a commit when this write or an earlier uncommitted one changed the device's mappings, else a data sync. */
  private async makeDurable(mappingChanged: boolean): Promise<void> {
    if (mappingChanged || this.device.changedThisTransaction()) await this.host.commit();
    else await this.host.syncData();
  }

  private async unmap(first: number, end: number): Promise<boolean> {
    let changed = false;
    const CHUNK = 4096;
    for (let a = first; a < end; a += CHUNK) {
      const b = Math.min(end, a + CHUNK);
      const keys: number[] = [];
      for (let k = a; k < b; k++) keys.push(k);
      await this.host.gate.sharedly(async () => {
        await this.locks.acquireAll(keys);
        try {
          const n = await this.host.guard(() => this.device.removeRange(a, b));
          if (n) changed = true;
        } finally {
          this.locks.releaseAll(keys);
        }
      });
    }
    return changed;
  }

  /**
   * The write path for `[offset, offset + length)` with bytes from `data` (null = zeros).
   * `provision`: allocate even where the bytes are zero (NO_HOLE). Returns whether any mapping changed.
   */
  private async writeRange(offset: number, length: number, data: Uint8Array | null, provision: boolean, accepted?: () => void): Promise<boolean> {
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const keys: number[] = [];
    for (let k = first; k <= last; k++) keys.push(k);
    const gateWait = this.host.gate.enterShared();
    if (gateWait) await gateWait;
    try {
      if (keys.length === 1) {
        const w = this.locks.acquire(first);
        if (w) await w;
      } else {
        await this.locks.acquireAll(keys);
      }
      try {
        return await this.writeLocked(offset, length, data, provision, first, last, accepted);
      } finally {
        this.locks.releaseAll(keys);
      }
    } finally {
      this.host.gate.leaveShared();
    }
  }

  private async writeLocked(offset: number, length: number, data: Uint8Array | null, provision: boolean, first: number, last: number, accepted?: () => void): Promise<boolean> {
    const bs = this.blockSize;
    const pieces: Piece[] = [];
    let needAlloc = 0;
    for (let vblock = first; vblock <= last; vblock++) {
      const blockStart = vblock * bs;
      const start = Math.max(offset, blockStart) - blockStart;
      const end = Math.min(offset + length, blockStart + bs) - blockStart;
      const src = data ? data.subarray(blockStart + start - offset, blockStart + end - offset) : null;
      let m = this.lookup(vblock);
      if (m instanceof Promise) m = await m;
      if (!m && !provision && (src === null || isZero(src))) continue; // zeros onto an unprovisioned block: nothing to do
      const p: Piece = { vblock, start, end, src, mapping: m };
      if (!m || m.shared) needAlloc++;
      pieces.push(p);
    }
    if (pieces.length === 0) return false;
    if (accepted && needAlloc === 0) {
      // In place into exclusive blocks: acknowledged once queued; the gate and the locks are held until it is done.
      await this.acked.write(() => writePieces(this.host.dataFile, this.blockSize, pieces), pieces.map((p) => p.vblock), accepted, (err) =>
        this.host.writeLost(`a write of ${length} bytes at offset ${offset} of ${this.name}, already acknowledged, failed: ${(err as Error)?.message ?? String(err)}`, err));
      return false;
    }
    let fresh: number[] = [];
    if (needAlloc) {
      fresh = await this.host.allocate(needAlloc);
      let i = 0;
      for (const p of pieces) if (!p.mapping || p.mapping.shared) p.fresh = fresh[i++];
    }
    try {
      await writePieces(this.host.dataFile, this.blockSize, pieces);
    } catch (err) {
      if (fresh.length) await this.host.release(fresh);
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
        this.host.noteHostSpace?.(false);
        throw new NoSpaceError(`Cannot write ${length} bytes at offset ${offset} of ${this.name}: the host file system holding ${this.host.dataFile.path} is full`, { host: true, path: this.host.dataFile.path });
      }
      throw err;
    }
    if (!fresh.length) return false;
    this.host.noteHostSpace?.(true);
    const entries: Array<[number, number]> = [];
    for (const p of pieces) if (p.fresh !== undefined) entries.push([p.vblock, p.fresh]);
    await this.host.guard(() => this.device.insertMany(entries));
    return true;
  }
}
