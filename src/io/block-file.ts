/**
 * Positioned I/O on a file, the one interface every on-disk structure reads and writes through.
 * Implementations: {@link FileBlockFile} (a real file), and in tests a faulty in-memory file
 * that can drop unsynced writes to simulate a power cut.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { constants, read as fsRead, write as fsWrite, writev as fsWritev } from 'node:fs';
import { IoError } from '../errors.js';
import { allocate as nativeAllocate, punchHole as nativePunchHole, readNow } from './native.js';

const RESOLVED: Promise<void> = Promise.resolve();

/** Reads up to this size first try the page cache without blocking (see {@link readNow}). */
const NOWAIT_READ_MAX = 64 * 1024;

export interface BlockFile {
  /** Where the file lives (for messages). */
  readonly path: string;
  /**
   * Fills `buf` from `position`. Bytes past the end of the file read as zeros.
   * Resolves when `buf` is full; rejects with an I/O error.
   */
  read(buf: Uint8Array, position: number): Promise<void>;
  /** Writes all of `buf` at `position`, growing the file if needed. Not durable until {@link sync}. */
  write(buf: Uint8Array, position: number): Promise<void>;
  /** Writes the buffers back to back starting at `position` (one system call where possible). */
  writev(bufs: readonly Uint8Array[], position: number): Promise<void>;
  /** Makes every completed write durable (fdatasync). */
  sync(): Promise<void>;
  /** Current apparent size in bytes. */
  size(): Promise<number>;
  /** Sets the apparent size; growing leaves a hole. */
  truncate(size: number): Promise<void>;
  /**
   * Deallocates `[offset, offset + length)` so it reads as zeros and the host gets the space
   * back; the apparent size does not change. A file system without hole punching may do nothing.
   */
  punchHole(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}

/** Options for {@link FileBlockFile.open}. */
export interface OpenOptions {
  /** Open read-only (the default is read-write). */
  readOnly?: boolean;
  /** Create the file if it does not exist. */
  create?: boolean;
}

/** {@link BlockFile} over a file on the host, through libuv's thread pool (never blocks the loop). */
export class FileBlockFile implements BlockFile {
  private constructor(readonly path: string, private readonly fh: FileHandle, readonly readOnly: boolean) {}

  /** @example const f = await FileBlockFile.open('pool/metadata'); */
  static async open(path: string, opts: OpenOptions = {}): Promise<FileBlockFile> {
    let flags = opts.readOnly ? constants.O_RDONLY : constants.O_RDWR;
    if (opts.create && !opts.readOnly) flags |= constants.O_CREAT;
    try {
      return new FileBlockFile(path, await open(path, flags, 0o600), !!opts.readOnly);
    } catch (err) {
      throw wrap(err, `open ${path}`);
    }
  }

  // Positioned I/O uses the callback API on the descriptor: on this hot path it costs about half
  // of FileHandle.read's overhead per call (measured: 46k vs 23k 4 KiB reads/s at depth 1).

  read(buf: Uint8Array, position: number): Promise<void> {
    let done = 0;
    if (buf.length <= NOWAIT_READ_MAX) {
      // Cached small reads complete here, without a thread-pool round trip; larger ones stay
      // on the pool, where several run in parallel with the event loop.
      let n: number;
      try {
        n = readNow(this.fh.fd, buf, 0, buf.length, position);
      } catch (err) {
        return Promise.reject(wrap(err, `read ${buf.length} bytes at ${position} of ${this.path}`));
      }
      if (n === buf.length) return RESOLVED;
      if (n > 0) done = n;
    }
    return this.readRest(buf, position, done);
  }

  /**
   * Fills `buf` from the page cache without waiting for the disk, on this thread: true when all
   * of it was there (small reads only), false when the caller must {@link read} instead.
   */
  readCached(buf: Uint8Array, position: number): boolean {
    if (buf.length > NOWAIT_READ_MAX) return false;
    try {
      return readNow(this.fh.fd, buf, 0, buf.length, position) === buf.length;
    } catch {
      return false;
    }
  }

  private async readRest(buf: Uint8Array, position: number, done: number): Promise<void> {
    const fd = this.fh.fd;
    while (done < buf.length) {
      let n: number;
      try {
        n = await new Promise<number>((resolve, reject) => fsRead(fd, buf, done, buf.length - done, position + done, (e, k) => (e ? reject(e) : resolve(k))));
      } catch (err) {
        throw wrap(err, `read ${buf.length} bytes at ${position} of ${this.path}`);
      }
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    const fd = this.fh.fd;
    let done = 0;
    while (done < buf.length) {
      let n: number;
      try {
        n = await new Promise<number>((resolve, reject) => fsWrite(fd, buf, done, buf.length - done, position + done, (e, k) => (e ? reject(e) : resolve(k))));
      } catch (err) {
        throw wrap(err, `write ${buf.length} bytes at ${position} of ${this.path}`);
      }
      done += n;
    }
  }

  async writev(bufs: readonly Uint8Array[], position: number): Promise<void> {
    if (bufs.length === 1) return this.write(bufs[0]!, position);
    let total = 0;
    for (const b of bufs) total += b.length;
    let n: number;
    try {
      const fd = this.fh.fd;
      n = await new Promise<number>((resolve, reject) => fsWritev(fd, bufs as NodeJS.ArrayBufferView[], position, (e, k) => (e ? reject(e) : resolve(k))));
    } catch (err) {
      throw wrap(err, `write ${total} bytes at ${position} of ${this.path}`);
    }
    if (n === total) return;
    // Short vectored write: finish buffer by buffer.
    let pos = position;
    for (const b of bufs) {
      if (n >= b.length) {
        n -= b.length;
      } else {
        await this.write(b.subarray(n), pos + n);
        n = 0;
      }
      pos += b.length;
    }
  }

  async sync(): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (err) {
      throw wrap(err, `sync ${this.path}`);
    }
  }

  async size(): Promise<number> {
    return (await this.fh.stat()).size;
  }

  async truncate(size: number): Promise<void> {
    try {
      await this.fh.truncate(size);
    } catch (err) {
      throw wrap(err, `resize ${this.path} to ${size} bytes`);
    }
  }

  async punchHole(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    try {
      await nativePunchHole(this.fh.fd, offset, length);
    } catch (err) {
      throw wrap(err, `punch a hole of ${length} bytes at ${offset} in ${this.path}`);
    }
  }

  /**
   * Gives `[offset, offset + length)` real blocks on the host (the file grows when the range
   * passes its end), so later writes there cannot fail with ENOSPC; a file system that cannot
   * preallocate does nothing. Rejects with the ENOSPC/EDQUOT error itself when the host is full.
   */
  async allocate(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    try {
      await nativeAllocate(this.fh.fd, offset, length);
    } catch (err) {
      throw wrap(err, `allocate ${length} bytes at ${offset} in ${this.path}`);
    }
  }

  /** The file descriptor, for native helpers (SEEK_DATA/SEEK_HOLE). */
  get fd(): number {
    return this.fh.fd;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

function wrap(err: unknown, action: string): Error {
  const e = err as NodeJS.ErrnoException;
  if (e && (e.code === 'ENOSPC' || e.code === 'EDQUOT')) return e; // callers turn this into NoSpaceError with context
  if (e && e.code === 'ENOENT') return e;
  return new IoError(`Cannot ${action}: ${e?.message ?? String(err)}`, { errno: e?.code }, { cause: err });
}
