/**
 * Writes images from a content store into an OCI image layout directory (`image save`):
 * `oci-layout`, `index.json` with one entry per image carrying its ref-name annotation, and
 * every blob the images use (manifest, config, layers) copied byte for byte, so layer digests
 * stay what they were when the image was loaded. Copies are checked against their digests on
 * the way (a damaged store is reported, not exported). Images whose manifest has Docker media
 * types get an equivalent OCI manifest (same config and layer blobs, OCI media types), since
 * OCI tools (skopeo's `oci:` transport, umoci) expect OCI manifests in a layout.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ExistsError } from '../errors.js';
import type { ContentStore } from './content-store.js';
import { type Digest, digestHex, sha256Digest } from './digest.js';
import { DigestStream } from './digest-stream.js';
import { MEDIA_TYPES } from './media-types.js';
import { type Descriptor, type ImageManifest, REF_NAME, parseManifest } from './oci-types.js';

/** One image to save: its manifest (stored in the content store) and the ref name to give it. */
export interface ImageToSave {
  manifest: Descriptor;
  /** The `org.opencontainers.image.ref.name` annotation (the tag, e.g. `latest`); none when undefined. */
  refName?: string | undefined;
}

/** What {@link writeOciLayout} wrote, per image: the manifest descriptor in the new index. */
export interface SavedLayout {
  manifests: Descriptor[];
  /** Blobs copied (each once). */
  blobs: number;
  bytes: number;
}

const DOCKER_TO_OCI = new Map<string, string>([
  [MEDIA_TYPES.dockerManifest, MEDIA_TYPES.ociManifest],
  [MEDIA_TYPES.dockerConfig, MEDIA_TYPES.ociConfig],
  [MEDIA_TYPES.dockerLayer, MEDIA_TYPES.ociLayer],
  [MEDIA_TYPES.dockerLayerGzip, MEDIA_TYPES.ociLayerGzip],
  [MEDIA_TYPES.dockerLayerZstd, MEDIA_TYPES.ociLayerZstd],
  [MEDIA_TYPES.dockerForeignLayerGzip, MEDIA_TYPES.ociLayerNondistGzip],
]);

/** The OCI form of a manifest: same blobs, OCI media types; undefined when it already is one. */
export function toOciManifest(m: ImageManifest): ImageManifest | undefined {
  const all = [m.mediaType, m.config.mediaType, ...m.layers.map((l) => l.mediaType)];
  if (!all.some((t) => t !== undefined && DOCKER_TO_OCI.has(t))) return undefined;
  const conv = (d: Descriptor): Descriptor => ({ ...d, mediaType: DOCKER_TO_OCI.get(d.mediaType) ?? d.mediaType });
  const out: ImageManifest = { schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest, config: conv(m.config), layers: m.layers.map(conv) };
  if (m.annotations) out.annotations = m.annotations;
  return out;
}

/**
 * Writes `images` from `store` into the OCI layout directory `dir` (made if missing; refused
 * with an ExistsError when it already holds an `index.json`).
 */
export async function writeOciLayout(dir: string, store: ContentStore, images: ImageToSave[]): Promise<SavedLayout> {
  if (await stat(join(dir, 'index.json')).then(() => true, () => false)) {
    throw new ExistsError(`Cannot save images to ${dir}: it already holds an image layout (index.json)`, { path: dir });
  }
  const blobDir = join(dir, 'blobs', 'sha256');
  await mkdir(blobDir, { recursive: true });
  const written = new Set<Digest>();
  let bytes = 0;

  const copy = async (d: Descriptor) => {
    if (written.has(d.digest)) return;
    const check = new DigestStream({ digest: d.digest, size: d.size, name: `blob ${d.digest} of the content store` });
    await pipeline(await store.open(d.digest), check, createWriteStream(join(blobDir, digestHex(d.digest)), { mode: 0o644 }));
    written.add(d.digest);
    bytes += d.size;
  };
  const putBytes = async (b: Buffer) => {
    const digest = sha256Digest(b);
    if (!written.has(digest)) {
      await writeFile(join(blobDir, digestHex(digest)), b, { mode: 0o644 });
      written.add(digest);
      bytes += b.length;
    }
    return digest;
  };

  const manifests: Descriptor[] = [];
  for (const img of images) {
    const raw = await store.read(img.manifest.digest);
    const m = parseManifest(raw, `manifest ${img.manifest.digest}`);
    await copy(m.config);
    for (const l of m.layers) await copy(l);
    const oci = toOciManifest(m);
    let desc: Descriptor;
    if (oci) {
      const b = Buffer.from(JSON.stringify(oci));
      desc = { mediaType: MEDIA_TYPES.ociManifest, digest: await putBytes(b), size: b.length };
    } else {
      await copy(img.manifest);
      desc = { mediaType: m.mediaType ?? MEDIA_TYPES.ociManifest, digest: img.manifest.digest, size: img.manifest.size };
    }
    if (img.refName !== undefined) desc.annotations = { [REF_NAME]: img.refName };
    manifests.push(desc);
  }
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests }));
  return { manifests, blobs: written.size, bytes };
}
