/**
 * A userspace copy-up union file system: what the overlay and aufs drivers do on the first write
 * to a file that lives in a lower layer, for machines without overlayfs (the copyup suite's
 * "userspace copy-up" peer, and a reference the kernel peer can be checked against).
 *
 * Layers are directories, top first; only the top layer is written. A write to `rel`:
 * 1. looks the name up top-down: the first layer that has it wins; a whiteout (aufs'
 *    `.wh.<name>` next to where the name would be) in a higher layer hides lower copies;
 * 2. when the winner is a lower layer, copies the file up: parent directories first (with the
 *    lower directories' modes), then the whole file into a temporary name in the top layer
 *    (a read/write loop, every byte through this process), its mode, owner and times, an
 *    fsync of the copy, and a rename into place (so a crash leaves no half copy);
 * 3. writes the bytes into the top layer's copy (open without truncation, positioned write,
 *    close), with an fsync before the close when `durable`.
 */
import { constants } from 'node:fs';
import { chown, lstat, mkdir, open, rename, rm, stat, utimes } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';

/** What one write did. */
export interface CopyUpWrite {
  /** Index of the layer the file was found in (0 = top), before the write. */
  foundIn: number;
  /** Bytes read from the lower file and written into the top layer by the copy-up (0 when none). */
  copiedBytes: number;
  /** Files copied up by this write (0 or 1). */
  copiedFiles: number;
}

/** Counters over the lifetime of one {@link CopyUpFs}. */
export interface CopyUpCounters {
  copiedFiles: number;
  copiedBytes: number;
  fsyncs: number;
}

const CHUNK = 1024 * 1024;
const WHITEOUT = '.wh.';

function notFound(rel: string): NodeJS.ErrnoException {
  const e = new Error(`Cannot find ${rel} in any layer: ENOENT`) as NodeJS.ErrnoException;
  e.code = 'ENOENT';
  return e;
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
    throw e;
  }
}

/** A union of directory layers with copy-up on write (see the file comment). */
export class CopyUpFs {
  readonly counters: CopyUpCounters = { copiedFiles: 0, copiedBytes: 0, fsyncs: 0 };
  private tmpSeq = 0;

  /** `layers[0]` is the writable top layer; the rest are read-only, highest first. */
  constructor(readonly layers: readonly string[]) {
    if (layers.length < 1) throw new RangeError('Cannot make a union of no layers: expected at least the top layer');
  }

  /** The index of the layer whose copy of `rel` is visible, or -1 (absent or whited out). */
  async lookup(rel: string): Promise<number> {
    const parts = rel.split(sep).filter(Boolean);
    const name = parts.pop()!;
    const parent = parts.join(sep);
    for (let i = 0; i < this.layers.length; i++) {
      const layer = this.layers[i]!;
      if (await exists(join(layer, rel))) return i;
      if (await exists(join(layer, parent, WHITEOUT + name))) return -1;
      // A whiteout of a parent directory hides the whole subtree below it.
      for (let k = 0; k < parts.length; k++) {
        if (await exists(join(layer, ...parts.slice(0, k), WHITEOUT + parts[k]!))) return -1;
      }
    }
    return -1;
  }

  /** Writes `data` at `offset` of `rel`, copying the file up first when it lives in a lower layer. */
  async write(rel: string, offset: number, data: Uint8Array, opts: { durable?: boolean } = {}): Promise<CopyUpWrite> {
    const foundIn = await this.lookup(rel);
    if (foundIn < 0) throw notFound(rel);
    let copiedBytes = 0;
    if (foundIn > 0) copiedBytes = await this.copyUp(rel, foundIn);
    const fh = await open(join(this.layers[0]!, rel), constants.O_WRONLY);
    try {
      let done = 0;
      while (done < data.length) done += (await fh.write(data, done, data.length - done, offset + done)).bytesWritten;
      if (opts.durable) {
        await fh.sync();
        this.counters.fsyncs++;
      }
    } finally {
      await fh.close();
    }
    return { foundIn, copiedBytes, copiedFiles: foundIn > 0 ? 1 : 0 };
  }

  /** Copies `rel` from layer `from` into the top layer; returns the bytes copied. */
  private async copyUp(rel: string, from: number): Promise<number> {
    const top = this.layers[0]!;
    const src = join(this.layers[from]!, rel);
    await this.copyUpParents(rel, from);
    const st = await stat(src);
    const tmp = join(top, dirname(rel), `.copyup-${process.pid}-${this.tmpSeq++}`);
    const input = await open(src, constants.O_RDONLY);
    let copied = 0;
    try {
      const out = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, st.mode & 0o7777);
      try {
        const buf = Buffer.allocUnsafe(CHUNK);
        for (;;) {
          const { bytesRead } = await input.read(buf, 0, CHUNK, copied);
          if (bytesRead === 0) break;
          let w = 0;
          while (w < bytesRead) w += (await out.write(buf, w, bytesRead - w, copied + w)).bytesWritten;
          copied += bytesRead;
        }
        if (process.getuid?.() === 0) await out.chown(st.uid, st.gid);
        await out.chmod(st.mode & 0o7777);
        await out.sync();
        this.counters.fsyncs++;
      } finally {
        await out.close();
      }
      await utimes(tmp, st.atime, st.mtime);
      await rename(tmp, join(top, rel));
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    } finally {
      await input.close();
    }
    this.counters.copiedFiles++;
    this.counters.copiedBytes += copied;
    return copied;
  }

  /** Makes the parent directories of `rel` in the top layer, with the modes and owners they have in layer `from`. */
  private async copyUpParents(rel: string, from: number): Promise<void> {
    const parts = rel.split(sep).filter(Boolean).slice(0, -1);
    for (let k = 1; k <= parts.length; k++) {
      const sub = join(...parts.slice(0, k));
      const dst = join(this.layers[0]!, sub);
      if (await exists(dst)) continue;
      const st = await stat(join(this.layers[from]!, sub));
      await mkdir(dst, { mode: st.mode & 0o7777 });
      if (process.getuid?.() === 0) await chown(dst, st.uid, st.gid);
    }
  }
}
