/**
 * Small editors for OCI image layouts in tests: read and write blobs and JSON documents by
 * digest, replace a manifest's layers (recompressed, corrupted, relabelled) and point a tag at
 * the result, so a test can make the variants an image archive may arrive in.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, digestHex, sha256Digest } from '../../src/images/digest.js';
import type { Descriptor, ImageIndex, ImageManifest } from '../../src/images/oci-types.js';

export function blobFile(layout: string, d: Digest): string {
  return join(layout, 'blobs', 'sha256', digestHex(d));
}

export async function readBlob(layout: string, d: Digest): Promise<Buffer> {
  return readFile(blobFile(layout, d));
}

/** Writes a blob; resolves to its descriptor with `mediaType`. */
export async function putBlob(layout: string, bytes: Buffer, mediaType: string): Promise<Descriptor> {
  const digest = sha256Digest(bytes);
  await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
  await writeFile(blobFile(layout, digest), bytes);
  return { mediaType, digest, size: bytes.length };
}

export async function readJsonBlob<T>(layout: string, d: Digest): Promise<T> {
  return JSON.parse((await readBlob(layout, d)).toString()) as T;
}

export async function readIndex(layout: string): Promise<ImageIndex> {
  return JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as ImageIndex;
}

export async function writeIndex(layout: string, index: ImageIndex): Promise<void> {
  await writeFile(join(layout, 'index.json'), JSON.stringify(index));
}

/** The manifest descriptor and manifest the layout's index gives `tag`. */
export async function manifestOf(layout: string, tag: string): Promise<{ desc: Descriptor; manifest: ImageManifest }> {
  const desc = (await readIndex(layout)).manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!desc) throw new Error(`no tag ${tag} in ${layout}`);
  return { desc, manifest: await readJsonBlob<ImageManifest>(layout, desc.digest) };
}

/** Stores `manifest` and adds (or moves) `tag` to it in index.json; resolves to its descriptor. */
export async function tagManifest(layout: string, manifest: ImageManifest, tag: string, extra: Partial<Descriptor> = {}): Promise<Descriptor> {
  const desc = { ...(await putBlob(layout, Buffer.from(JSON.stringify(manifest)), 'application/vnd.oci.image.manifest.v1+json')), ...extra };
  desc.annotations = { 'org.opencontainers.image.ref.name': tag };
  const index = await readIndex(layout);
  index.manifests = index.manifests.filter((m) => m.annotations?.['org.opencontainers.image.ref.name'] !== tag);
  index.manifests.push(desc);
  await writeIndex(layout, index);
  return desc;
}
