/**
 * Read access to the files of an image archive, whether it is a directory or a tar file. A tar
 * is indexed once (tar-stream reads every header; each regular file's data offset and size are
 * kept), then files are read by offset from the tar itself, so nothing is extracted. Symlinks
 * and hard links inside the tar (older `docker save` links duplicate layers) resolve to the
 * file they name. A compressed tar (gzip or zstd) is first decompressed into a temporary file.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BadImageError, NotFoundError } from '../errors.js';
import { openUncompressed, sniffCompression } from './decompress.js';
import { feedTar, tarStream } from './tar-format.js';

/** The files of an archive, by `/`-separated path relative to its root. */
export interface ArchiveFiles {
  /** Where the archive is (directory or tar file). */
  readonly location: string;
  /** Size of a file, or undefined when there is none at `path`. */
  size(path: string): Promise<number | undefined>;
  /** A stream of a file's bytes; rejects with a NotFoundError when there is none. */
  open(path: string): Promise<Readable>;
  /** Releases what the archive holds (temporary files). */
  close(): Promise<void>;
}

/** Reads the whole file at `path`, refusing files over `max` bytes. */
export async function readArchiveFile(files: ArchiveFiles, path: string, max: number): Promise<Buffer> {
  const size = await files.size(path);
  if (size === undefined) throw new NotFoundError(`Cannot read ${path} in ${files.location}: no such file`, { path });
  if (size > max) throw new BadImageError(`Cannot read ${path} in ${files.location}: ${size} bytes, more than the ${max} allowed for a document`, { path });
  const chunks: Buffer[] = [];
  for await (const c of await files.open(path)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function clean(path: string): string {
  return posix.normalize('/' + path).slice(1);
}

/** Files of a directory. */
class DirectoryFiles implements ArchiveFiles {
  constructor(readonly location: string) {}

  private real(path: string): string {
    const rel = clean(path);
    return join(this.location, rel);
  }

  async size(path: string): Promise<number | undefined> {
    const st = await stat(this.real(path)).catch(() => undefined);
    return st?.isFile() ? st.size : undefined;
  }

  async open(path: string): Promise<Readable> {
    const fh = await open(this.real(path), 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') throw new NotFoundError(`Cannot read ${path} in ${this.location}: no such file`, { path });
      throw err;
    });
    return fh.createReadStream({ highWaterMark: 256 * 1024 });
  }

  async close(): Promise<void> {}
}

interface TarFile {
  offset: number;
  size: number;
}

/** Files of an (uncompressed) tar, read in place. */
class TarFiles implements ArchiveFiles {
  constructor(
    readonly location: string,
    private readonly tarPath: string,
    private readonly files: Map<string, TarFile>,
    private readonly tmp: string | undefined,
  ) {}

  async size(path: string): Promise<number | undefined> {
    return this.files.get(clean(path))?.size;
  }

  async open(path: string): Promise<Readable> {
    const f = this.files.get(clean(path));
    if (!f) throw new NotFoundError(`Cannot read ${path} in ${this.location}: no such file in the archive`, { path });
    if (f.size === 0) return Readable.from([]);
    return createReadStream(this.tarPath, { start: f.offset, end: f.offset + f.size - 1, highWaterMark: 256 * 1024 });
  }

  async close(): Promise<void> {
    if (this.tmp) await rm(this.tmp, { recursive: true, force: true });
  }
}

/** Indexes the regular files of a tar (links resolved to their targets). */
async function indexTar(tarPath: string, location: string): Promise<Map<string, TarFile>> {
  const files = new Map<string, TarFile>();
  const links: Array<{ name: string; target: string }> = [];
  const extract = tarStream().extract();
  const reading = feedTar(createReadStream(tarPath, { highWaterMark: 1024 * 1024 }), extract);
  try {
    for await (const entry of extract as AsyncIterable<Readable & { header: import('tar-stream').Header & { byteOffset?: number } }>) {
      const h = entry.header;
      const name = clean(h.name);
      if (h.type === 'file' || h.type === 'contiguous-file') files.set(name, { offset: h.byteOffset ?? 0, size: h.size });
      else if (h.type === 'symlink') links.push({ name, target: clean(posix.join(posix.dirname(name), h.linkname)) });
      else if (h.type === 'link') links.push({ name, target: clean(h.linkname) });
      for await (const _ of entry); // skip the data
    }
  } catch (err) {
    throw new BadImageError(`Cannot read the archive ${location}: not a readable tar (${(err as Error).message})`, { path: location }, { cause: err });
  }
  await reading;
  for (let round = 0; round < 8 && links.length > 0; round++) {
    for (let i = links.length - 1; i >= 0; i--) {
      const f = files.get(links[i]!.target);
      if (f) {
        files.set(links[i]!.name, f);
        links.splice(i, 1);
      }
    }
  }
  return files;
}

/**
 * The files of the archive at `location`: a directory, a tar file, or a gzip/zstd-compressed tar
 * (decompressed into a temporary directory under `tmpDir`, removed by `close`).
 */
export async function openArchiveFiles(location: string, tmpDir?: string): Promise<ArchiveFiles> {
  const st = await stat(location).catch(() => undefined);
  if (!st) throw new NotFoundError(`Cannot read image archive ${location}: no such file or directory`, { path: location });
  if (st.isDirectory()) return new DirectoryFiles(location);
  const fh = await open(location, 'r');
  const head = Buffer.alloc(4);
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  const c = sniffCompression(head);
  if (c === 'none') return new TarFiles(location, location, await indexTar(location, location), undefined);
  if (!tmpDir) throw new BadImageError(`Cannot read image archive ${location}: it is ${c}-compressed and no temporary directory was given to decompress it into`, { path: location });
  const tmp = await mkdtemp(join(tmpDir, 'archive-'));
  try {
    const tarPath = join(tmp, 'archive.tar');
    await pipeline(openUncompressed(createReadStream(location), { name: `archive ${location}` }), createWriteStream(tarPath));
    return new TarFiles(location, tarPath, await indexTar(tarPath, location), tmp);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}
