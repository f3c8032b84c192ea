/**
 * An OCI image layout as one tar file (`image save NAME OUT.tar`, what `skopeo`'s `oci-archive:`
 * and `ctr images import` read): the layout is written by {@link writeOciLayout} into a scratch
 * directory, then its files go into the tar in layout order (`oci-layout`, `index.json`,
 * `blobs/sha256/...`), each streamed, with the tar written through tar-stream.
 */
import { once } from 'node:events';
import { createReadStream, createWriteStream } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Pack } from 'tar-stream';
import type { ContentStore } from './content-store.js';
import { type ImageToSave, type SavedLayout, writeOciLayout } from './oci-layout-writer.js';
import { tarStream } from './tar-format.js';

async function addFile(pack: Pack, name: string, path: string, size: number, mtime: Date): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const sink = pack.entry({ name, size, mode: 0o644, mtime, type: 'file' }, (err) => (err ? reject(err) : resolve()));
    const src = createReadStream(path, { highWaterMark: 256 * 1024 });
    src.on('error', (err) => {
      sink.destroy(err);
      reject(err);
    });
    src.pipe(sink);
  });
}

async function addDir(pack: Pack, name: string, mtime: Date): Promise<void> {
  await new Promise<void>((resolve, reject) => pack.entry({ name, type: 'directory', mode: 0o755, mtime }, (err) => (err ? reject(err) : resolve())));
}

/**
 * Writes `images` from `store` as an OCI layout tar at `outFile` (refused when it exists), using
 * `scratch` (an empty directory, removed afterwards) for the layout. A failure removes the
 * partial tar.
 */
export async function writeOciArchive(outFile: string, scratch: string, store: ContentStore, images: ImageToSave[]): Promise<SavedLayout> {
  const out = createWriteStream(outFile, { flags: 'wx', mode: 0o644 });
  await once(out, 'open');
  const pack = tarStream().pack();
  const piping = pipeline(Readable.from(pack as AsyncIterable<Uint8Array>), out);
  try {
    const saved = await writeOciLayout(scratch, store, images);
    const mtime = new Date();
    for (const f of ['oci-layout', 'index.json']) await addFile(pack, f, join(scratch, f), (await stat(join(scratch, f))).size, mtime);
    await addDir(pack, 'blobs/', mtime);
    await addDir(pack, 'blobs/sha256/', mtime);
    const blobDir = join(scratch, 'blobs', 'sha256');
    for (const name of (await readdir(blobDir)).sort()) {
      const p = join(blobDir, name);
      await addFile(pack, `blobs/sha256/${name}`, p, (await stat(p)).size, mtime);
    }
    pack.finalize();
    await piping;
    return saved;
  } catch (err) {
    pack.destroy(err as Error);
    await piping.catch(() => undefined);
    await rm(outFile, { force: true });
    throw err;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
