/**
 * Content-addressed blob store under a directory: `ROOT/blobs/sha256/<hex>` (the layout an OCI
 * image layout uses, so a pool's blobs can be copied into one byte for byte), with unfinished
 * writes in `ROOT/blobs/ingest/`. A blob is written to a temporary file while it is hashed and
 * counted, checked against the expected digest and size, synced, renamed into place and the
 * directory synced: a blob under its digest is always complete and always has that digest. A
 * mismatch removes the temporary file and rejects with a {@link BadImageError} naming the blob.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { BadImageError, NotFoundError } from '../errors.js';
import { type Digest, digestFromHex, digestHex, isDigest } from './digest.js';

/** A stored blob. */
export interface BlobInfo {
  digest: Digest;
  size: number;
}

/** What a blob being stored must be; `name` says what it is in messages ("layer 2 of alpine:3"). */
export interface BlobExpectation {
  digest?: Digest | undefined;
  size?: number | undefined;
  name?: string | undefined;
}

/** Result of {@link ContentStore.ingest}: the blob, and whether it was already stored. */
export interface IngestResult extends BlobInfo {
  existed: boolean;
}

const HEX_RE = /^[0-9a-f]{64}$/;
/** Chunks smaller than this are gathered before a write (tar and gzip streams yield small pieces). */
const WRITE_BATCH = 1024 * 1024;

/** Describes a blob for a message: its name and digest when known. */
function label(expect: BlobExpectation | undefined, digest?: Digest): string {
  const d = expect?.digest ?? digest;
  if (expect?.name && d) return `${expect.name} (${d})`;
  return expect?.name ?? d ?? 'blob';
}

/** The blobs of one pool (or any directory), addressed by sha256 digest. */
export class ContentStore {
  /** Directory holding the blobs (`ROOT/blobs/sha256`). */
  readonly blobDir: string;
  /** Directory holding writes in progress (`ROOT/blobs/ingest`). */
  readonly ingestDir: string;

  /** A store under `root` (a pool directory); nothing is created until the first write. */
  constructor(readonly root: string) {
    this.blobDir = join(root, 'blobs', 'sha256');
    this.ingestDir = join(root, 'blobs', 'ingest');
  }

  /** Where the blob with `digest` lives (whether or not it is stored). */
  path(digest: Digest): string {
    return join(this.blobDir, digestHex(digest));
  }

  /**
   * Stores the bytes of `source` (a stream or any async iterable of bytes), hashing and counting
   * them on the way. When `expect.size` is given the write stops as soon as the source runs past
   * it. The result names the blob; `existed` is true when the store already held it (the new copy
   * is dropped). Rejects with a BadImageError naming the blob when the digest or size differs
   * from `expect`; the store is then unchanged.
   */
  async ingest(source: Readable | AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect?: BlobExpectation): Promise<IngestResult> {
    await mkdir(this.ingestDir, { recursive: true });
    await mkdir(this.blobDir, { recursive: true });
    const tmp = join(this.ingestDir, `${randomBytes(8).toString('hex')}.tmp`);
    const fh = await open(tmp, 'wx', 0o444);
    let done = false;
    try {
      const hash = createHash('sha256');
      let size = 0;
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      const flush = async () => {
        if (pendingBytes === 0) return;
        const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        await fh.write(buf, 0, buf.length);
      };
      for await (const piece of source as AsyncIterable<Uint8Array | string>) {
        const chunk = typeof piece === 'string' ? Buffer.from(piece) : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
        size += chunk.length;
        if (expect?.size !== undefined && size > expect.size) {
          throw new BadImageError(`Cannot store ${label(expect)}: it is longer than ${expect.size} bytes, the size its descriptor gives`, { blob: expect.digest, size: expect.size });
        }
        hash.update(chunk);
        // Copy: the source may reuse its buffers once we yield.
        pending.push(Buffer.from(chunk));
        pendingBytes += chunk.length;
        if (pendingBytes >= WRITE_BATCH) await flush();
      }
      await flush();
      const digest = `sha256:${hash.digest('hex')}` as Digest;
      if (expect?.size !== undefined && size !== expect.size) {
        throw new BadImageError(`Cannot store ${label(expect)}: ${size} bytes, expected ${expect.size} (the blob is truncated)`, { blob: expect.digest, size, expected: expect.size });
      }
      if (expect?.digest !== undefined && digest !== expect.digest) {
        throw new BadImageError(`Cannot store ${label(expect)}: its content hashes to ${digest}, expected ${expect.digest}`, { blob: expect.digest, actual: digest });
      }
      await fh.sync();
      await fh.close();
      done = true;
      const final = this.path(digest);
      const existed = await stat(final).then(() => true, () => false);
      if (existed) await unlink(tmp);
      else {
        await rename(tmp, final);
        await syncDir(this.blobDir);
      }
      return { digest, size, existed };
    } catch (err) {
      if (!done) await fh.close().catch(() => undefined);
      await rm(tmp, { force: true });
      throw err;
    }
  }

  /** Stores `bytes` (a manifest, a config): {@link ingest} of one chunk. */
  async put(bytes: Uint8Array, expect?: BlobExpectation): Promise<IngestResult> {
    return this.ingest([bytes], expect);
  }

  /** The blob's size, or undefined when it is not stored. */
  async stat(digest: Digest): Promise<BlobInfo | undefined> {
    try {
      const st = await stat(this.path(digest));
      return { digest, size: st.size };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** True when the blob is stored. */
  async has(digest: Digest): Promise<boolean> {
    return (await this.stat(digest)) !== undefined;
  }

  /** A stream of the blob's bytes; rejects with a NotFoundError when it is not stored. */
  async open(digest: Digest): Promise<Readable> {
    const fh = await open(this.path(digest), 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') throw new NotFoundError(`Cannot read blob ${digest}: not in the content store ${this.blobDir}`, { blob: digest });
      throw err;
    });
    return fh.createReadStream({ highWaterMark: 256 * 1024 });
  }

  /**
   * The whole blob (a manifest, a config), checked against its digest. Refuses blobs larger than
   * `maxBytes` (default 16 MiB) so a damaged store cannot make a caller read gigabytes.
   */
  async read(digest: Digest, maxBytes = 16 * 1024 * 1024): Promise<Buffer> {
    const info = await this.stat(digest);
    if (!info) throw new NotFoundError(`Cannot read blob ${digest}: not in the content store ${this.blobDir}`, { blob: digest });
    if (info.size > maxBytes) throw new BadImageError(`Cannot read blob ${digest}: ${info.size} bytes, more than the ${maxBytes} allowed for a document`, { blob: digest });
    const fh = await open(this.path(digest), 'r');
    let buf: Buffer;
    try {
      buf = await fh.readFile();
    } finally {
      await fh.close();
    }
    const actual = `sha256:${createHash('sha256').update(buf).digest('hex')}`;
    if (actual !== digest) throw new BadImageError(`Cannot read blob ${digest}: the stored bytes hash to ${actual} (the store is damaged)`, { blob: digest, actual });
    return buf;
  }

  /** Every stored blob, sorted by digest. */
  async list(): Promise<BlobInfo[]> {
    let names: string[];
    try {
      names = await readdir(this.blobDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: BlobInfo[] = [];
    for (const name of names.sort()) {
      if (!HEX_RE.test(name)) continue;
      const info = await this.stat(digestFromHex(name));
      if (info) out.push(info);
    }
    return out;
  }

  /** Removes a blob; false when it was not stored. The directory is synced. */
  async delete(digest: Digest): Promise<boolean> {
    if (!isDigest(digest)) throw new NotFoundError(`Cannot delete blob ${String(digest)}: not a digest`);
    try {
      await unlink(this.path(digest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    await syncDir(this.blobDir);
    return true;
  }

  /** Removes what interrupted writes left in the ingest directory (call when nothing is ingesting). */
  async cleanIngest(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.ingestDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
    for (const name of names) await rm(join(this.ingestDir, name), { force: true });
    return names.length;
  }
}

/** fsync of a directory, so a rename or unlink in it is durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
