/**
 * Sparse-aware copies between a host file (or a stream: stdin, stdout, a pipe) and a thin
 * device, through a {@link PoolService} so they work the same in-process and through a daemon.
 *
 * Import reads only the data extents of a regular file (SEEK_DATA/SEEK_HOLE) and, for files and
 * streams alike, skips all-zero 64 KiB pieces: the device is new, so what is not written reads as
 * zeros and stays unprovisioned. Export reads only the mapped extents of the device; into a
 * regular file it writes only their non-zero 4 KiB pages at their offsets in a file truncated to
 * the device size, so holes stay holes; into a stream it writes every byte, zeros for holes.
 *
 * @example
 * const svc = await connectPool(dir);
 * try {
 *   await importDevice(svc, 'disk', 'disk.raw');
 *   await exportDevice(svc, 'disk', 'copy.raw');
 * } finally {
 *   await svc.close();
 * }
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { CanceledError, UsageError } from '../errors.js';
import { seekData, seekHole } from '../io/native.js';
import { ZEROES, isZero } from '../io/zeroes.js';
import { GiB, KiB, MiB, formatSize } from '../units.js';
import type { PoolService } from './pool-service.js';

/** Bytes per read and write. */
const CHUNK = 4 * MiB;
/** Granularity of zero skipping on import (the smallest pool block). */
const IMPORT_PIECE = 64 * KiB;
/** Granularity of zero skipping on export to a regular file (a host file-system page). */
const EXPORT_PIECE = 4 * KiB;
/** Writes to the device in flight at once. */
const WINDOW = 4;
/** Device size an import from a stream of unknown length starts with (doubled as needed). */
const STREAM_START_SIZE = 1 * GiB;
/** Bytes of device asked for allocation status at once on export. */
const EXTENT_WINDOW = 1 * GiB;


/** Called as work proceeds: bytes of the source (import) or device (export) done, and the total when known. */
export type ProgressFn = (done: number, total: number | null) => void;

export interface TransferOptions {
  onProgress?: ProgressFn;
  /** Stops the copy between chunks (the error's code is 'ECANCELED'). */
  signal?: AbortSignal;
}

export interface ImportOptions extends TransferOptions {
  /** Size of the new device; default: the source's size rounded up to 512 bytes. */
  sizeBytes?: number;
}

export interface ImportResult {
  name: string;
  sizeBytes: number;
  /** Bytes the source held (its length). */
  sourceBytes: number;
  /** Bytes written to the device (the rest were holes or zeros). */
  writtenBytes: number;
  /** How holes were found: 'seek' (SEEK_DATA/SEEK_HOLE on a regular file) or 'zeros' (a stream scanned for zeros). */
  method: 'seek' | 'zeros';
}

export interface ExportResult {
  sizeBytes: number;
  /** Bytes of mapped extents read from the device. */
  mappedBytes: number;
  /** Bytes written to the target (for a regular file: data pages only). */
  writtenBytes: number;
  /** 'sparse' (positioned writes into a regular file) or 'stream' (every byte in order). */
  method: 'sparse' | 'stream';
}

/** A source: a path, or a readable stream such as `process.stdin`. */
export type ImportSource = string | Readable | NodeJS.ReadableStream;
/** A target: a path, or a writable stream such as `process.stdout`. */
export type ExportTarget = string | Writable | NodeJS.WritableStream;

function checkSignal(signal: AbortSignal | undefined, action: string): void {
  if (signal?.aborted) throw new CanceledError(`Cannot ${action}: interrupted`);
}

/** Marks a read-ahead promise as handled (its error is seen when awaited, or dropped if the copy stopped first). */
function ahead<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

function roundUp512(n: number): number {
  return Math.ceil(n / 512) * 512;
}

/**
 * Calls `emit(start, end)` for the maximal runs of `buf` whose `piece`-sized pieces (aligned to
 * absolute offsets, `base` being the offset of `buf[0]`) are not all zero.
 */
function nonZeroRuns(buf: Buffer, base: number, piece: number, emit: (start: number, end: number) => void): void {
  let runStart = -1;
  let i = 0;
  while (i < buf.length) {
    const next = Math.min(buf.length, piece - ((base + i) % piece) + i);
    const zero = isZero(buf, i, next);
    if (!zero && runStart < 0) runStart = i;
    if (zero && runStart >= 0) {
      emit(runStart, i);
      runStart = -1;
    }
    i = next;
  }
  if (runStart >= 0) emit(runStart, buf.length);
}

/** Up to {@link WINDOW} device writes in flight; the first failure is thrown by the next call. */
class WriteWindow {
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown;
  written = 0;

  constructor(private readonly svc: PoolService, private readonly dev: string) {}

  async put(offset: number, data: Buffer): Promise<void> {
    this.throwIfFailed();
    while (this.inflight.size >= WINDOW) {
      await Promise.race(this.inflight);
      this.throwIfFailed();
    }
    const p: Promise<void> = this.svc.write(this.dev, offset, data).then(
      () => {
        this.written += data.length;
      },
      (err) => {
        this.failure ??= err;
      },
    ).finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  /** Waits for every write in flight, ignoring failures (before giving up on the device). */
  async settle(): Promise<void> {
    await Promise.all(this.inflight);
  }

  /** Waits for every write; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.inflight);
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}

/** Writes the non-zero pieces of `buf` (at device offset `base`) through `w`. */
async function putNonZero(w: WriteWindow, buf: Buffer, base: number): Promise<void> {
  const runs: Array<[number, number]> = [];
  nonZeroRuns(buf, base, IMPORT_PIECE, (s, e) => runs.push([s, e]));
  for (const [s, e] of runs) await w.put(base + s, buf.subarray(s, e));
}

async function isRegularFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/**
 * Creates device `name` and copies `source` into it. Sparse-aware: holes of a regular file are
 * not read, and all-zero pieces are not written. The device is `opts.sizeBytes` long, else the
 * source's length rounded up to 512 bytes (a stream's length is known only at its end: the device
 * grows while it is read and gets its final size then). On failure the new device is removed.
 *
 * @throws UsageError when the source is empty or longer than `opts.sizeBytes`.
 */
export async function importDevice(svc: PoolService, name: string, source: ImportSource, opts: ImportOptions = {}): Promise<ImportResult> {
  const action = `import ${name}`;
  if (opts.sizeBytes !== undefined && (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0 || opts.sizeBytes % 512 !== 0)) {
    throw new UsageError(`Cannot ${action}: a size of ${opts.sizeBytes} bytes is not a positive multiple of 512`);
  }
  if (typeof source === 'string' && (await isRegularFile(source))) {
    const fh = await open(source, 'r');
    try {
      const size = (await fh.stat()).size;
      const devSize = opts.sizeBytes ?? roundUp512(size);
      if (size === 0 && opts.sizeBytes === undefined) throw new UsageError(`Cannot ${action}: ${source} is empty; give --size to create an empty device`);
      if (size > devSize) throw new UsageError(`Cannot ${action}: ${source} holds ${size} bytes (${formatSize(size)}), more than the device size ${devSize} (${formatSize(devSize)})`);
      await svc.createDevice(name, devSize);
      try {
        const written = await copyFileIn(svc, name, fh, size, opts, action);
        return { name, sizeBytes: devSize, sourceBytes: size, writtenBytes: written, method: 'seek' };
      } catch (err) {
        await svc.remove(name).catch(() => undefined);
        throw err;
      }
    } finally {
      await fh.close();
    }
  }
  const stream: NodeJS.ReadableStream = typeof source === 'string' ? createReadStream(source) : source;
  let devSize = opts.sizeBytes ?? STREAM_START_SIZE;
  let created = false;
  let w: WriteWindow | undefined;
  // A stream may wait for input for ever: stop waiting when the caller gives up.
  const onAbort = () => (stream as Readable).destroy?.(new CanceledError(action));
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    checkSignal(opts.signal, action);
    if (typeof source === 'string') await openedOrError(stream);
    await svc.createDevice(name, devSize);
    created = true;
    const win = new WriteWindow(svc, name);
    w = win;
    let pos = 0;
    for await (const chunk of chunksOf(stream, opts.signal, action, (total) => opts.onProgress?.(total, null))) {
      const start = pos;
      pos += chunk.length;
      if (pos > devSize) {
        if (opts.sizeBytes !== undefined) throw new UsageError(`Cannot ${action}: the input is longer than the device size ${devSize} (${formatSize(devSize)})`);
        await win.drain();
        while (devSize < pos) devSize *= 2;
        await svc.resize(name, devSize);
      }
      await putNonZero(win, chunk, start);
    }
    await win.drain();
    if (opts.sizeBytes === undefined) {
      if (pos === 0) throw new UsageError(`Cannot ${action}: the input is empty; give --size to create an empty device`);
      devSize = roundUp512(pos);
      await svc.resize(name, devSize);
    }
    opts.onProgress?.(pos, pos);
    return { name, sizeBytes: devSize, sourceBytes: pos, writtenBytes: win.written, method: 'zeros' };
  } catch (err) {
    await w?.settle();
    if (created) await svc.remove(name).catch(() => undefined);
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    if (typeof source === 'string') (stream as Readable).destroy();
  }
}

/**
 * The bytes of a stream in CHUNK-sized buffers (the last one shorter), each a fresh buffer the
 * consumer may keep; `onRead` sees the running total after each piece read.
 */
async function* chunksOf(source: NodeJS.ReadableStream | Readable, signal: AbortSignal | undefined, action: string, onRead?: (total: number) => void): AsyncGenerator<Buffer> {
  let buf = Buffer.allocUnsafe(CHUNK);
  let fill = 0;
  let total = 0;
  for await (const piece of source as AsyncIterable<Uint8Array | string>) {
    checkSignal(signal, action);
    let data = typeof piece === 'string' ? Buffer.from(piece) : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    total += data.length;
    while (data.length) {
      const n = Math.min(data.length, CHUNK - fill);
      data.copy(buf, fill, 0, n);
      fill += n;
      data = data.subarray(n);
      if (fill === CHUNK) {
        yield buf;
        buf = Buffer.allocUnsafe(CHUNK);
        fill = 0;
      }
    }
    onRead?.(total);
  }
  checkSignal(signal, action);
  if (fill) yield buf.subarray(0, fill);
}

/** Resolves once a file read stream is open, or rejects with its open error. */
function openedOrError(s: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve, reject) => {
    s.once('ready', resolve);
    s.once('error', reject);
  });
}

/** Copies the data extents of an open regular file into device `dev`; returns the bytes written. */
async function copyFileIn(svc: PoolService, dev: string, fh: FileHandle, size: number, opts: TransferOptions, action: string): Promise<number> {
  const w = new WriteWindow(svc, dev);
  try {
    await copyExtentsIn(w, fh, size, opts, action);
  } catch (err) {
    await w.settle();
    throw err;
  }
  await w.drain();
  opts.onProgress?.(size, size);
  return w.written;
}

async function copyExtentsIn(w: WriteWindow, fh: FileHandle, size: number, opts: TransferOptions, action: string): Promise<void> {
  let pos = 0;
  opts.onProgress?.(0, size);
  while (pos < size) {
    checkSignal(opts.signal, action);
    const dataStart = await seekData(fh.fd, pos, size);
    if (dataStart < 0 || dataStart >= size) break;
    const dataEnd = Math.min(size, await seekHole(fh.fd, dataStart, size));
    let at = dataStart;
    while (at < dataEnd) {
      checkSignal(opts.signal, action);
      const end = Math.min(dataEnd, (Math.floor(at / CHUNK) + 1) * CHUNK);
      const buf = Buffer.allocUnsafe(end - at);
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await fh.read(buf, got, buf.length - got, at + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      await putNonZero(w, buf.subarray(0, got), at);
      at = end;
      opts.onProgress?.(at, size);
    }
    pos = dataEnd;
  }
}

/**
 * Copies device `dev` into `target`. A path that is a regular file (or does not exist yet) is
 * written sparsely: truncated to the device size, then only the non-zero pages of the mapped
 * extents are written, so unprovisioned ranges stay holes. Anything else (a stream, a FIFO, a
 * character or block device) gets every byte in order, zeros for unprovisioned ranges.
 */
export async function exportDevice(svc: PoolService, dev: string, target: ExportTarget, opts: TransferOptions = {}): Promise<ExportResult> {
  const action = `export ${dev}`;
  const { sizeBytes } = await svc.geometry(dev);
  if (typeof target === 'string') {
    let regular = true;
    try {
      regular = (await stat(target)).isFile();
    } catch {
      regular = true;
    }
    if (regular) {
      const fh = await open(target, 'w');
      try {
        await fh.truncate(sizeBytes);
        return await copyOutSparse(svc, dev, fh, sizeBytes, opts, action);
      } finally {
        await fh.close();
      }
    }
    const ws = createWriteStream(target, { flags: 'w' });
    try {
      await openedOrError(ws);
      const r = await copyOutStream(svc, dev, ws, sizeBytes, opts, action);
      await new Promise<void>((resolve, reject) => {
        ws.once('error', reject);
        ws.end(resolve);
      });
      return r;
    } finally {
      ws.destroy();
    }
  }
  return copyOutStream(svc, dev, target, sizeBytes, opts, action);
}

/** Mapped extents of `dev`, a window at a time. */
async function* mappedExtents(svc: PoolService, dev: string, size: number): AsyncGenerator<{ offset: number; length: number; mapped: boolean }> {
  for (let off = 0; off < size; off += EXTENT_WINDOW) {
    const len = Math.min(EXTENT_WINDOW, size - off);
    yield* await svc.extents(dev, off, len);
  }
}

async function copyOutSparse(svc: PoolService, dev: string, fh: FileHandle, size: number, opts: TransferOptions, action: string): Promise<ExportResult> {
  let mappedBytes = 0;
  let writtenBytes = 0;
  opts.onProgress?.(0, size);
  for await (const ext of mappedExtents(svc, dev, size)) {
    checkSignal(opts.signal, action);
    if (!ext.mapped) {
      opts.onProgress?.(ext.offset + ext.length, size);
      continue;
    }
    mappedBytes += ext.length;
    const end = ext.offset + ext.length;
    let at = ext.offset;
    const readAt = (o: number) => ahead(svc.read(dev, o, Math.min(end, (Math.floor(o / CHUNK) + 1) * CHUNK) - o));
    let next: Promise<Buffer> | undefined = readAt(at);
    while (next) {
      checkSignal(opts.signal, action);
      const buf = await next;
      const chunkAt = at;
      at += buf.length;
      next = at < end ? readAt(at) : undefined;
      const runs: Array<[number, number]> = [];
      nonZeroRuns(buf, chunkAt, EXPORT_PIECE, (s, e) => runs.push([s, e]));
      for (const [s, e] of runs) {
        await writeAll(fh, buf.subarray(s, e), chunkAt + s);
        writtenBytes += e - s;
      }
      opts.onProgress?.(at, size);
    }
  }
  opts.onProgress?.(size, size);
  return { sizeBytes: size, mappedBytes, writtenBytes, method: 'sparse' };
}

async function writeAll(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

/** Writes to a stream honouring back-pressure; rejects on the stream's error (e.g. EPIPE). */
function streamWriter(out: NodeJS.WritableStream): { write(buf: Buffer): Promise<void>; dispose(): void } {
  let failure: unknown;
  let wake: (() => void) | undefined;
  const onError = (err: unknown) => {
    failure ??= err;
    wake?.();
  };
  out.on('error', onError);
  return {
    async write(buf) {
      if (failure) throw failure;
      if (!out.write(buf)) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          out.once('drain', resolve);
        });
        out.removeListener('drain', wake!);
        wake = undefined;
      }
      if (failure) throw failure;
    },
    dispose() {
      out.removeListener('error', onError);
    },
  };
}

async function copyOutStream(svc: PoolService, dev: string, out: NodeJS.WritableStream, size: number, opts: TransferOptions, action: string): Promise<ExportResult> {
  const w = streamWriter(out);
  let mappedBytes = 0;
  let written = 0;
  try {
    opts.onProgress?.(0, size);
    for await (const ext of mappedExtents(svc, dev, size)) {
      const end = ext.offset + ext.length;
      let at = ext.offset;
      if (ext.mapped) mappedBytes += ext.length;
      const next = (o: number) => (ext.mapped ? ahead(svc.read(dev, o, Math.min(end, o + CHUNK) - o)) : Promise.resolve(ZEROES.subarray(0, Math.min(end, o + CHUNK) - o)));
      let pending: Promise<Buffer> | undefined = next(at);
      while (pending) {
        checkSignal(opts.signal, action);
        const buf = await pending;
        at += buf.length;
        pending = at < end ? next(at) : undefined;
        // Holes are views of the shared zero buffer, which is never written to.
        await w.write(buf);
        written += buf.length;
        opts.onProgress?.(at, size);
      }
    }
  } finally {
    w.dispose();
  }
  return { sizeBytes: size, mappedBytes, writtenBytes: written, method: 'stream' };
}

/** Writes a stream into device `dev` from `offset` on (every byte, zeros too); returns the bytes written. */
export async function writeFromStream(svc: PoolService, dev: string, offset: number, source: NodeJS.ReadableStream | Readable, opts: TransferOptions = {}): Promise<number> {
  const action = `write ${dev}`;
  const w = new WriteWindow(svc, dev);
  let pos = offset;
  const onAbort = () => (source as Readable).destroy?.(new CanceledError(action));
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    checkSignal(opts.signal, action);
    for await (const chunk of chunksOf(source, opts.signal, action, (total) => opts.onProgress?.(total, null))) {
      await w.put(pos, chunk);
      pos += chunk.length;
    }
  } catch (err) {
    await w.settle();
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
  await w.drain();
  return pos - offset;
}

/** Reads `length` bytes of device `dev` at `offset` into a stream, a chunk at a time. */
export async function readToStream(svc: PoolService, dev: string, offset: number, length: number, out: NodeJS.WritableStream | Writable, opts: TransferOptions = {}): Promise<void> {
  const action = `read ${dev}`;
  const w = streamWriter(out);
  try {
    const end = offset + length;
    let at = offset;
    let pending: Promise<Buffer> | undefined = length ? ahead(svc.read(dev, at, Math.min(CHUNK, end - at))) : undefined;
    while (pending) {
      checkSignal(opts.signal, action);
      const buf = await pending;
      at += buf.length;
      pending = at < end ? ahead(svc.read(dev, at, Math.min(CHUNK, end - at))) : undefined;
      await w.write(buf);
      opts.onProgress?.(at - offset, length);
    }
  } finally {
    w.dispose();
  }
}
