/**
 * Opens a layer blob's uncompressed tar stream. The compression is read from the blob's first
 * bytes (gzip `1f 8b`, zstd `28 b5 2f fd`, anything else a plain tar), so a media type that
 * lies does not matter; the declared one only names what was expected. gzip goes through
 * Node's zlib, zstd through `fzstd` (Node 20 has no zstd in zlib). A truncated or damaged
 * stream fails with a BadImageError naming the blob, and the uncompressed bytes can be checked
 * against the layer's diff id on the way.
 */
import { PassThrough, Readable, Transform, type TransformCallback, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Decompress } from 'fzstd';
import { BadImageError, ThinpoolError } from '../errors.js';
import type { Digest } from './digest.js';
import { DigestStream } from './digest-stream.js';
import type { Compression } from './media-types.js';

/** Options of {@link openUncompressed}. */
export interface UncompressOptions {
  /** What the blob is, for messages ("layer 1 (sha256:...)"). */
  name: string;
  /** When given, the uncompressed bytes must hash to it (the config's `rootfs.diff_ids` entry). */
  diffId?: Digest | undefined;
  /** Called once the compression is known from the bytes. */
  onDetected?: (c: Compression) => void;
}

/** The compression the first bytes of a blob show. */
export function sniffCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/** A zstd decoding stream over fzstd's streaming decompressor. */
class ZstdDecoder extends Transform {
  private readonly dec = new Decompress((data) => {
    if (data.length > 0) this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  });
  private seen = false;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      if (chunk.length > 0) this.seen = true;
      this.dec.push(chunk);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      if (this.seen) this.dec.push(new Uint8Array(0), true);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }
}

function describe(err: unknown, name: string, c: Compression): unknown {
  if (err instanceof ThinpoolError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e?.name === 'AbortError' || e?.code === 'ERR_STREAM_PREMATURE_CLOSE') return err;
  const truncated = e?.code === 'Z_BUF_ERROR' || /unexpected end|EOF/i.test(e?.message ?? '');
  const what = truncated ? `the ${c} stream is truncated (${e.message})` : `the ${c} stream is damaged (${e?.message})`;
  return new BadImageError(`Cannot decompress ${name}: ${what}`, { compression: c }, { cause: err });
}

/** Yields `head` and then the rest of an iterator. */
async function* rejoin(head: Buffer[], it: AsyncIterator<Uint8Array>): AsyncGenerator<Uint8Array> {
  for (const h of head) yield h;
  for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
}

/**
 * A writable end for the pipeline that forwards into `out` with back-pressure. The pipeline
 * destroys its own streams on an error, so `out` stays alive for the error that names the blob.
 */
function forwardTo(out: PassThrough): Writable {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (out.destroyed) return cb(new Error('the reader went away'));
      if (out.write(chunk)) cb();
      else out.once('drain', () => cb());
    },
    final(cb) {
      out.end();
      cb();
    },
  });
  out.once('close', () => {
    if (!sink.writableFinished) sink.destroy();
  });
  return sink;
}

/**
 * The uncompressed tar of a layer blob read from `source`. Errors of `source` (e.g. a
 * {@link DigestStream} finding a digest mismatch) come out of the returned stream unchanged;
 * decoding errors come out as BadImageErrors naming the blob.
 */
export function openUncompressed(source: Readable | AsyncIterable<Uint8Array>, opts: UncompressOptions): Readable {
  const out = new PassThrough({ highWaterMark: 256 * 1024 });
  void (async () => {
    const it = (source as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
    const head: Buffer[] = [];
    let got = 0;
    let c: Compression = 'none';
    try {
      while (got < 4) {
        const r = await it.next();
        if (r.done) break;
        const b = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
        head.push(b);
        got += b.length;
      }
      c = sniffCompression(Buffer.concat(head));
      opts.onDetected?.(c);
      const stages: NodeJS.ReadWriteStream[] = [];
      if (c === 'gzip') stages.push(createGunzip({ chunkSize: 64 * 1024 }));
      else if (c === 'zstd') stages.push(new ZstdDecoder());
      if (opts.diffId) stages.push(new DigestStream({ digest: opts.diffId, name: opts.name, digestName: 'diff id' }));
      await pipeline([Readable.from(rejoin(head, it)), ...stages, forwardTo(out)] as NodeJS.ReadWriteStream[]);
    } catch (err) {
      (source as Partial<Readable>).destroy?.();
      if (!out.destroyed) out.destroy(describe(err, opts.name, c) as Error);
    }
  })();
  return out;
}
