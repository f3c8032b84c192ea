/**
 * An image read from outside (an OCI image layout, a `docker save` archive): its manifest,
 * config and layers, each blob opened as a stream that is checked against the descriptor naming
 * it (size and digest; the stream fails before it ends when they differ), and each layer's
 * uncompressed tar checked against its diff id.
 */
import { type Readable, pipeline } from 'node:stream';
import { BadImageError } from '../errors.js';
import type { ArchiveFiles } from './archive-files.js';
import type { Digest } from './digest.js';
import { DigestStream } from './digest-stream.js';
import { openUncompressed } from './decompress.js';
import { type Compression, layerCompression } from './media-types.js';
import type { Descriptor, ImageConfig, ImageManifest } from './oci-types.js';

/** One layer of an image. */
export interface LayerInfo {
  /** Position, 0 = bottom. */
  index: number;
  /** The blob as stored (usually compressed). */
  descriptor: Descriptor;
  /** sha256 of the uncompressed tar, from the config. */
  diffId: Digest;
  /** The compression the media type declares (the bytes decide; see `openLayer`). */
  declared: Compression | undefined;
}

/** An image read from an archive. */
export interface ImageSource {
  format: 'oci-layout' | 'docker-archive';
  /** The archive's path. */
  location: string;
  /** Names the archive gives this image (OCI ref-name annotations, docker RepoTags). */
  tags: string[];
  manifestDescriptor: Descriptor;
  manifest: ImageManifest;
  /** The manifest's bytes (hash to `manifestDescriptor.digest`). */
  manifestBytes: Buffer;
  config: ImageConfig;
  /** The config's bytes (hash to `manifest.config.digest`). */
  configBytes: Buffer;
  layers: LayerInfo[];
  /** A stream of a blob of this image, failing when its size or digest differs from `d`. */
  openBlob(d: Descriptor, name?: string): Promise<Readable>;
  /** The uncompressed tar of layer `index`, checked against the blob's descriptor and the diff id. */
  openLayer(index: number, onDetected?: (c: Compression) => void): Promise<Readable>;
  /** Releases the archive (temporary files of a compressed archive). */
  close(): Promise<void>;
}

/** Largest manifest, index or config read (containerd allows 4 MiB manifests; configs with long histories are larger). */
export const MAX_DOCUMENT = 16 * 1024 * 1024;

/** Name of layer `i` for messages. */
export function layerName(l: LayerInfo): string {
  return `layer ${l.index + 1} (${l.descriptor.digest})`;
}

/** Reads a whole document blob and checks its size and digest. */
export async function readVerified(open: () => Promise<Readable>, d: Descriptor, name: string): Promise<Buffer> {
  if (d.size > MAX_DOCUMENT) throw new BadImageError(`Cannot read ${name} (${d.digest}): ${d.size} bytes, more than the ${MAX_DOCUMENT} allowed for a document`, { blob: d.digest });
  const chunks: Buffer[] = [];
  const check = new DigestStream({ digest: d.digest, size: d.size, name: `${name} (${d.digest})` });
  pipeline(await open(), check, () => undefined); // errors surface on `check`; both are destroyed
  for await (const c of check) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Builds the parts of an {@link ImageSource} common to every archive format. */
export function makeImageSource(
  base: Omit<ImageSource, 'openBlob' | 'openLayer' | 'close' | 'layers'>,
  files: ArchiveFiles,
  pathOf: (d: Descriptor) => string,
): ImageSource {
  const diffIds = base.config.rootfs.diff_ids;
  if (diffIds.length !== base.manifest.layers.length) {
    throw new BadImageError(`Cannot read image in ${base.location}: its config lists ${diffIds.length} diff ids for ${base.manifest.layers.length} layers`, { path: base.location });
  }
  const layers: LayerInfo[] = base.manifest.layers.map((descriptor, index) => ({
    index,
    descriptor,
    diffId: diffIds[index]!,
    declared: layerCompression(descriptor.mediaType),
  }));
  for (const l of layers) {
    if (l.declared === undefined) {
      throw new BadImageError(`Cannot read ${layerName(l)} in ${base.location}: unsupported layer media type ${JSON.stringify(l.descriptor.mediaType)}`, { blob: l.descriptor.digest });
    }
  }
  const openBlob = async (d: Descriptor, name = 'blob'): Promise<Readable> => {
    const src = await files.open(pathOf(d));
    const check = new DigestStream({ digest: d.digest, size: d.size, name: `${name} (${d.digest})` });
    // An error of either side destroys both (no descriptor is left open) and surfaces on `check`.
    return pipeline(src, check, () => undefined);
  };
  return {
    ...base,
    layers,
    openBlob,
    async openLayer(index, onDetected) {
      const l = layers[index];
      if (!l) throw new BadImageError(`Cannot open layer ${index + 1} of the image in ${base.location}: it has ${layers.length} layers`);
      const raw = await openBlob(l.descriptor, `layer ${index + 1}`);
      return openUncompressed(raw, { name: layerName(l), diffId: l.diffId, onDetected });
    },
    close: () => files.close(),
  };
}
