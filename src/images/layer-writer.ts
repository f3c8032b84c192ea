/**
 * Turns a {@link TreeDiff} into an OCI layer: a tar of the changed paths taken from the upper
 * tree (metadata, content, symlink targets, device numbers, xattrs as `SCHILY.xattr.*` PAX
 * records, nanosecond mtimes), a whiteout `.wh.NAME` per deleted path, an opaque marker
 * `.wh..wh..opq` for a directory whose lower entries are all gone, and hard links within the
 * layer kept as links (names of the same inode that did not change are added as links too, so
 * the link survives, as containerd's ChangeWriter does). The tar is gzip-compressed into a file
 * while both the tar (diff id) and the compressed blob (digest) are hashed.
 */
import { once } from 'node:events';
import { createReadStream, createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type { Pack } from 'tar-stream';
import { DigestStream } from './digest-stream.js';
import type { Digest } from './digest.js';
import type { FileInfo } from './file-info.js';
import { MEDIA_TYPES } from './media-types.js';
import { encodeHeader, type EntrySpec, tarStream } from './tar-format.js';
import type { TreeDiff } from './tree-diff.js';
import { OPAQUE_MARKER, WHITEOUT_PREFIX } from './whiteouts.js';

/** The layer {@link writeLayer} wrote. */
export interface WrittenLayer {
  /** sha256 of the uncompressed tar (goes into the config's `rootfs.diff_ids`). */
  diffId: Digest;
  /** sha256 of the gzip blob (the manifest's layer descriptor). */
  digest: Digest;
  /** Bytes of the gzip blob. */
  size: number;
  /** Bytes of the uncompressed tar. */
  uncompressedSize: number;
  mediaType: string;
  /** Tar entries written (whiteouts and opaque markers included). */
  entries: number;
}

/** Options of {@link writeLayer}. */
export interface WriteLayerOptions {
  /** gzip level (default 6, as docker). */
  level?: number;
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

function specOf(info: FileInfo, name: string): EntrySpec {
  return {
    name,
    type: info.type === 'socket' ? 'file' : info.type,
    size: info.size,
    mode: info.mode,
    uid: info.uid,
    gid: info.gid,
    mtimeNs: info.mtimeNs,
    linkname: info.target ?? '',
    devmajor: info.devmajor,
    devminor: info.devminor,
    xattrs: info.xattrs,
  };
}

/** Adds one entry; for a regular file its content is streamed from `path`. */
async function addEntry(pack: Pack, spec: EntrySpec, path?: string): Promise<void> {
  const header = encodeHeader(spec);
  await new Promise<void>((resolve, reject) => {
    const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    if (spec.type !== 'file' || header.size === 0 || path === undefined) {
      sink.end(undefined);
      return;
    }
    const src = createReadStream(path, { highWaterMark: 256 * 1024 });
    src.on('error', (err) => {
      sink.destroy(err);
      reject(err);
    });
    src.on('data', (chunk) => {
      if (!sink.write(chunk)) {
        src.pause();
        sink.once('drain', () => src.resume());
      }
    });
    src.on('end', () => sink.end(undefined));
  });
}

/** Writes every entry of the diff into `pack`; resolves to the number of entries. */
async function produce(diff: TreeDiff, pack: Pack): Promise<number> {
  let entries = 0;
  const add = async (spec: EntrySpec, path?: string) => {
    await addEntry(pack, spec, path);
    entries++;
  };
  const opaqueDirs = new Set<string>();
  const linkSource = new Map<bigint, string>();
  const inLayer = new Set(diff.changes.filter((c) => c.kind !== 'D').map((c) => c.path.slice(1)));
  const dirTimes = new Map<string, bigint>();
  for (const c of diff.changes) if (c.info?.type === 'directory') dirTimes.set(c.info.rel, c.info.mtimeNs);

  for (const c of diff.changes) {
    const rel = c.path.slice(1);
    const parent = parentOf(rel);
    if (c.kind === 'D') {
      if (opaqueDirs.has(parent)) continue;
      const base = rel.slice(parent.length === 0 ? 0 : parent.length + 1);
      const name = parent === '' ? WHITEOUT_PREFIX + base : `${parent}/${WHITEOUT_PREFIX}${base}`;
      await add({ name, type: 'file', size: 0, mode: 0o644, uid: 0, gid: 0, mtimeNs: dirTimes.get(parent) ?? 0n });
      continue;
    }
    const info = c.info!;
    if (info.type === 'socket') continue;
    if (info.type === 'directory') {
      await add(specOf(info, rel + '/'));
      if (c.opaque) {
        opaqueDirs.add(rel);
        await add({ name: `${rel}/${OPAQUE_MARKER}`, type: 'file', size: 0, mode: 0o644, uid: 0, gid: 0, mtimeNs: info.mtimeNs });
      }
      continue;
    }
    const group = info.nlink > 1 ? diff.linkGroups.get(info.ino) : undefined;
    const source = group ? linkSource.get(info.ino) : undefined;
    if (source !== undefined) {
      await add({ ...specOf(info, rel), type: 'link', size: 0, linkname: source });
      continue;
    }
    await add(specOf(info, rel), info.type === 'file' ? join(diff.upper, rel) : undefined);
    if (group) {
      linkSource.set(info.ino, rel);
      // Names of this inode that did not change: add them as links so the link holds after applying.
      for (const other of group) {
        if (other === rel || inLayer.has(other)) continue;
        await add({ ...specOf(info, other), type: 'link', size: 0, linkname: rel });
      }
    }
  }
  return entries;
}

/**
 * Writes the layer for `diff` (from {@link diffTrees}) to `outFile` (gzip), reading content from
 * the diff's upper tree. The upper tree must not change meanwhile (stop the container). On
 * failure the partial file is removed.
 */
export async function writeLayer(diff: TreeDiff, outFile: string, opts: WriteLayerOptions = {}): Promise<WrittenLayer> {
  const pack = tarStream().pack();
  const tarHash = new DigestStream();
  const blobHash = new DigestStream();
  const out = createWriteStream(outFile, { flags: 'wx', mode: 0o644 });
  const piping = pipeline(Readable.from(pack as AsyncIterable<Uint8Array>), tarHash, createGzip({ level: opts.level ?? 6 }), blobHash, out);
  let entries = 0;
  try {
    entries = await produce(diff, pack);
    pack.finalize();
    await piping;
  } catch (err) {
    pack.destroy(err as Error);
    await piping.catch(() => undefined);
    if (!out.closed) await once(out, 'close').catch(() => undefined);
    await rm(outFile, { force: true });
    throw err;
  }
  return {
    diffId: tarHash.digest,
    digest: blobHash.digest,
    size: blobHash.size,
    uncompressedSize: tarHash.size,
    mediaType: MEDIA_TYPES.ociLayerGzip,
    entries,
  };
}
