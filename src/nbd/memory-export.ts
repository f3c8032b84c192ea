/**
 * A sparse in-memory {@link NbdExport} with 4 KiB pages: the reference implementation of the
 * export contract and the export the NBD tests run against.
 */
import { RangeErrorWithCode, ReadOnlyError, UnsupportedError } from '../errors.js';
import type { AllocationExtent, NbdExport, ReadSegment, WriteZeroesOptions } from './export.js';

export interface MemoryExportOptions {
  name: string;
  /** Size in bytes, a multiple of 512. */
  size: number;
  description?: string;
  readOnly?: boolean;
  /** Fail fast-zero requests with ENOTSUP, like a store that cannot zero faster than it writes. */
  slowZero?: boolean;
}

/** Calls seen by a {@link MemoryExport}, for tests. */
export interface MemoryExportStats {
  reads: number;
  bytesRead: number;
  writes: number;
  bytesWritten: number;
  fuaWrites: number;
  flushes: number;
  trims: number;
  writeZeroes: number;
  blockStatus: number;
  caches: number;
}

const PAGE = 4096;
/** An allocated page known to read as zeros. */
const ZERO_PAGE = new Uint8Array(0);
const MAX_EXTENTS = 1 << 16;

/**
 * Pages never written, trimmed, or zeroed without NO_HOLE are holes (`hole, zero`); pages zeroed
 * with NO_HOLE are allocated zeros (`zero`); written pages are data. Trim drops only whole pages.
 * `read` returns fresh buffers (never views of the pages), so later writes cannot change a reply
 * that is still queued on a socket.
 *
 * @example
 * const exp = new MemoryExport({ name: 'disk', size: 64 * MiB });
 * await exp.write(4096, new Uint8Array(4096).fill(1), false);
 * await exp.blockStatus(0, 16384); // [{ length: 4096, hole: true, zero: true }, { length: 4096, hole: false, zero: false }, ...]
 */
export class MemoryExport implements NbdExport {
  static readonly PAGE_SIZE = PAGE;
  readonly name: string;
  readonly description?: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly stats: MemoryExportStats = { reads: 0, bytesRead: 0, writes: 0, bytesWritten: 0, fuaWrites: 0, flushes: 0, trims: 0, writeZeroes: 0, blockStatus: 0, caches: 0 };
  private readonly slowZero: boolean;
  private readonly pages = new Map<number, Uint8Array>();

  constructor(opts: MemoryExportOptions) {
    if (!Number.isSafeInteger(opts.size) || opts.size < 0 || opts.size % 512 !== 0) {
      throw new RangeErrorWithCode(`Cannot create memory export: size ${opts.size}, expected a multiple of 512`);
    }
    this.name = opts.name;
    if (opts.description !== undefined) this.description = opts.description;
    this.size = opts.size;
    this.readOnly = opts.readOnly ?? false;
    this.slowZero = opts.slowZero ?? false;
  }

  async read(offset: number, length: number): Promise<ReadSegment[]> {
    this.check('read', offset, length);
    this.stats.reads++;
    this.stats.bytesRead += length;
    const segs: ReadSegment[] = [];
    let pieces: Uint8Array[] = [];
    let runStart = offset;
    let runLength = 0;
    const flushRun = () => {
      if (runLength === 0) return;
      const data = Buffer.allocUnsafe(runLength);
      let at = 0;
      for (const p of pieces) {
        data.set(p, at);
        at += p.length;
      }
      segs.push({ offset: runStart, length: runLength, data });
      pieces = [];
      runLength = 0;
    };
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const idx = Math.floor(pos / PAGE);
      const n = Math.min((idx + 1) * PAGE, end) - pos;
      const page = this.pages.get(idx);
      if (page === undefined || page === ZERO_PAGE) {
        flushRun();
        const last = segs[segs.length - 1];
        if (last && last.data === null && last.offset + last.length === pos) last.length += n;
        else segs.push({ offset: pos, length: n, data: null });
      } else {
        if (runLength === 0) runStart = pos;
        const at = pos - idx * PAGE;
        pieces.push(page.subarray(at, at + n));
        runLength += n;
      }
      pos += n;
    }
    flushRun();
    return segs;
  }

  async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    this.checkWritable('write', offset, data.length);
    this.stats.writes++;
    this.stats.bytesWritten += data.length;
    if (fua) this.stats.fuaWrites++;
    let pos = offset;
    let src = 0;
    while (src < data.length) {
      const idx = Math.floor(pos / PAGE);
      const at = pos - idx * PAGE;
      const n = Math.min(PAGE - at, data.length - src);
      let page = this.pages.get(idx);
      if (page === undefined || page === ZERO_PAGE) {
        page = new Uint8Array(PAGE);
        this.pages.set(idx, page);
      }
      page.set(data.subarray(src, src + n), at);
      pos += n;
      src += n;
    }
  }

  async flush(): Promise<void> {
    this.stats.flushes++;
  }

  async trim(offset: number, length: number, _fua: boolean): Promise<void> {
    this.checkWritable('trim', offset, length);
    this.stats.trims++;
    const [first, last] = this.wholePages(offset, length);
    this.forEachPage(first, last, (idx) => this.pages.delete(idx));
  }

  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    this.checkWritable('write zeroes to', offset, length);
    if (opts.fastZero && this.slowZero) throw new UnsupportedError('Cannot zero quickly: this export zeroes by writing');
    this.stats.writeZeroes++;
    const end = offset + length;
    const [first, last] = this.wholePages(offset, length);
    if (opts.noHole) for (let idx = first; idx <= last; idx++) this.pages.set(idx, ZERO_PAGE);
    else this.forEachPage(first, last, (idx) => this.pages.delete(idx));
    for (const idx of new Set([Math.floor(offset / PAGE), Math.floor((end - 1) / PAGE)])) {
      if (length === 0 || (idx >= first && idx <= last)) continue;
      const page = this.pages.get(idx);
      if (page === undefined) {
        if (opts.noHole) this.pages.set(idx, ZERO_PAGE);
      } else if (page !== ZERO_PAGE) {
        const base = idx * PAGE;
        page.fill(0, Math.max(offset, base) - base, Math.min(end, base + PAGE) - base);
      }
    }
  }

  async blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    this.check('get block status of', offset, length);
    this.stats.blockStatus++;
    const out: AllocationExtent[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end && out.length < MAX_EXTENTS; ) {
      const idx = Math.floor(pos / PAGE);
      const next = Math.min((idx + 1) * PAGE, end);
      const page = this.pages.get(idx);
      const hole = page === undefined;
      const zero = hole || page === ZERO_PAGE;
      const last = out[out.length - 1];
      if (last && last.hole === hole && last.zero === zero) last.length += next - pos;
      else out.push({ length: next - pos, hole, zero });
      pos = next;
    }
    return out;
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check('cache', offset, length);
    this.stats.caches++;
  }

  /** Bytes held in allocated pages (data or allocated zeros). */
  allocatedBytes(): number {
    return this.pages.size * PAGE;
  }

  /** Sorted `[offset, length]` runs of allocated pages (data or allocated zeros), clipped to the size. */
  allocatedRanges(): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (const idx of [...this.pages.keys()].sort((a, b) => a - b)) {
      const start = idx * PAGE;
      const len = Math.min(PAGE, this.size - start);
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === start) last[1] += len;
      else out.push([start, len]);
    }
    return out;
  }

  /** Pages entirely inside `[offset, offset + length)` (the export's last page counts whole when the range reaches the end). */
  private wholePages(offset: number, length: number): [number, number] {
    const end = offset + length;
    const first = Math.ceil(offset / PAGE);
    const last = end === this.size ? Math.ceil(end / PAGE) - 1 : Math.floor(end / PAGE) - 1;
    return [first, last];
  }

  private forEachPage(first: number, last: number, fn: (idx: number) => void): void {
    if (last < first) return;
    if (last - first + 1 > this.pages.size) {
      for (const idx of [...this.pages.keys()]) if (idx >= first && idx <= last) fn(idx);
    } else {
      for (let idx = first; idx <= last; idx++) fn(idx);
    }
  }

  private check(action: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeErrorWithCode(`Cannot ${action} ${this.name} at ${offset}+${length}: beyond the export size ${this.size}`);
    }
  }

  private checkWritable(action: string, offset: number, length: number): void {
    if (this.readOnly) throw new ReadOnlyError(`Cannot ${action} ${this.name}: export is read-only`);
    this.check(action, offset, length);
  }
}
