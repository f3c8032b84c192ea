/**
 * Opens an image archive, whatever its format: an OCI image layout (a directory or a tar of
 * one, possibly gzip/zstd-compressed) or a `docker save` archive. An archive with both
 * `index.json` and `manifest.json` (docker 25+) is read as an OCI layout.
 */
import { BadImageError } from '../errors.js';
import { openArchiveFiles } from './archive-files.js';
import { readDockerArchive } from './docker-archive-reader.js';
import type { ImageSource } from './image-source.js';
import { type ImageSelection, readOciLayout } from './oci-layout-reader.js';

/** Options of {@link readImage}. */
export interface ReadImageOptions extends ImageSelection {
  /** Where a compressed archive may be decompressed (required for compressed archives). */
  tmpDir?: string;
}

/**
 * Reads the image at `path` (see the module comment); `opts.ref` picks one of several images,
 * `opts.platform` one of a multi-platform index. Call `close()` on the result when done.
 */
export async function readImage(path: string, opts: ReadImageOptions = {}): Promise<ImageSource> {
  const files = await openArchiveFiles(path, opts.tmpDir);
  try {
    if ((await files.size('oci-layout')) !== undefined && (await files.size('index.json')) !== undefined) return await readOciLayout(files, opts);
    if ((await files.size('manifest.json')) !== undefined) return await readDockerArchive(files, opts);
    throw new BadImageError(`Cannot read image archive ${path}: neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)`, { path });
  } catch (err) {
    await files.close();
    throw err;
  }
}
