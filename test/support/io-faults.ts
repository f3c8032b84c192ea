/**
 * I/O-error injection into a live pool's files: wraps the methods of the pool's metadata and data
 * `FileBlockFile` objects (the real files underneath) so that the Nth read, write or sync of one
 * of them fails, once, with EIO, ENOSPC, or a short write (the first half of the buffer reaches
 * the file, then EIO). Counting runs without a target give the number of injection points.
 *
 * @example
 * const f = new IoFaults({ file: 'metadata', op: 'write', n: 3, kind: 'short' });
 * f.install(pool.metadataFile, 'metadata');
 * f.install(pool.dataFile, 'data');
 */
import type { FileBlockFile } from '../../src/io/block-file.js';
import { IoError } from '../../src/errors.js';

export type FaultFile = 'metadata' | 'data';
export type FaultOp = 'read' | 'write' | 'sync';
export type FaultKind = 'EIO' | 'ENOSPC' | 'short';

export interface FaultTarget {
  file: FaultFile;
  op: FaultOp;
  /** 1-based: the Nth operation of `op` on `file` after install. */
  n: number;
  kind: FaultKind;
}

/** The kinds that make sense for an operation. */
export const KINDS: Record<FaultOp, FaultKind[]> = { read: ['EIO'], write: ['EIO', 'ENOSPC', 'short'], sync: ['EIO', 'ENOSPC'] };

function injected(kind: 'EIO' | 'ENOSPC', action: string): Error {
  // What FileBlockFile gives: ENOSPC as the errno error itself, anything else as an IoError.
  if (kind === 'ENOSPC') return Object.assign(new Error(`ENOSPC: no space left on device, ${action} (injected)`), { code: 'ENOSPC', errno: -28, syscall: action });
  return new IoError(`Cannot ${action}: EIO: i/o error (injected)`, { errno: 'EIO' });
}

export class IoFaults {
  readonly counts: Record<FaultFile, Record<FaultOp, number>> = { metadata: { read: 0, write: 0, sync: 0 }, data: { read: 0, write: 0, sync: 0 } };
  /** Set once the fault was injected. */
  fired = false;
  /** Off: count only (after the fault, or to stop injecting during a check). */
  enabled = true;

  constructor(readonly target?: FaultTarget) {}

  private hit(file: FaultFile, op: FaultOp): FaultKind | undefined {
    if (!this.enabled) return undefined;
    const n = ++this.counts[file][op];
    const t = this.target;
    if (!t || this.fired || t.file !== file || t.op !== op || t.n !== n) return undefined;
    this.fired = true;
    return t.kind;
  }

  /** Wraps `f`'s I/O methods (on the instance). Cached reads are turned off so every read is counted. */
  install(f: FileBlockFile, file: FaultFile): void {
    const read = f.read.bind(f);
    const write = f.write.bind(f);
    const writev = f.writev.bind(f);
    const sync = f.sync.bind(f);
    const o = f as unknown as Record<string, unknown>;
    o.readCached = () => false;
    o.read = (buf: Uint8Array, pos: number) => {
      const k = this.hit(file, 'read');
      if (k) return Promise.reject(injected('EIO', `read ${buf.length} bytes at ${pos} of ${f.path}`));
      return read(buf, pos);
    };
    const failWrite = async (k: FaultKind, bufs: readonly Uint8Array[], pos: number, total: number): Promise<void> => {
      if (k === 'short') {
        // the first half (whole 512-byte sectors) lands, then the device fails
        const half = Math.floor(total / 2 / 512) * 512;
        let done = 0;
        for (const b of bufs) {
          if (done >= half) break;
          const part = b.subarray(0, Math.min(b.length, half - done));
          await write(part, pos + done);
          done += b.length;
        }
        throw injected('EIO', `write ${total} bytes at ${pos} of ${f.path} (short: ${half} written)`);
      }
      throw injected(k, `write ${total} bytes at ${pos} of ${f.path}`);
    };
    o.write = async (buf: Uint8Array, pos: number) => {
      const k = this.hit(file, 'write');
      if (k) return failWrite(k, [buf], pos, buf.length);
      return write(buf, pos);
    };
    o.writev = async (bufs: readonly Uint8Array[], pos: number) => {
      const k = this.hit(file, 'write');
      if (k) return failWrite(k, bufs, pos, bufs.reduce((n, b) => n + b.length, 0));
      // one counted operation (the original hands a single buffer to the patched write)
      return bufs.length === 1 ? write(bufs[0]!, pos) : writev(bufs, pos);
    };
    o.sync = async () => {
      const k = this.hit(file, 'sync');
      if (k) throw injected(k === 'short' ? 'EIO' : k, `sync ${f.path}`);
      return sync();
    };
    // A commit's "write these blocks, then sync" (one job in the real file): each run a counted
    // write, then a counted sync, so every step of it is an injection point too.
    o.writeDurable = async (runs: ReadonlyArray<{ position: number; bufs: readonly Uint8Array[] }>) => {
      for (const r of runs) await (o.writev as (b: readonly Uint8Array[], p: number) => Promise<void>)(r.bufs, r.position);
      await (o.sync as () => Promise<void>)();
    };
  }
}
