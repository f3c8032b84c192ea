/**
 * The image documents thinpool writes itself: the config and manifest of an image imported from
 * a root file system tar (`image import`), and of an image committed from a container (the base
 * image's config with one more diff id and history entry, and its manifest with one more layer,
 * in OCI media types).
 */
import type { Digest } from './digest.js';
import { MEDIA_TYPES } from './media-types.js';
import type { Descriptor, HistoryEntry, ImageConfig, ImageManifest } from './oci-types.js';
import { hostPlatform } from './oci-layout-reader.js';
import { toOciManifest } from './oci-layout-writer.js';

/** A document's bytes and the descriptor naming them (the digest is filled in by the store). */
export interface NewDocument {
  bytes: Buffer;
  mediaType: string;
}

const json = (v: unknown) => Buffer.from(JSON.stringify(v));

/** The config of a one-layer image made from a root file system tar. */
export function importConfig(diffId: Digest, createdBy: string, created: string): NewDocument {
  const p = hostPlatform();
  const config: ImageConfig = {
    created,
    architecture: p.architecture,
    os: p.os,
    config: {},
    rootfs: { type: 'layers', diff_ids: [diffId] },
    history: [{ created, created_by: createdBy }],
  };
  return { bytes: json(config), mediaType: MEDIA_TYPES.ociConfig };
}

/** `base` with one more layer on top: its diff id, a history entry, and the new creation time. */
export function committedConfig(base: ImageConfig, diffId: Digest, entry: HistoryEntry, created: string): NewDocument {
  const history = base.history ? [...base.history] : [];
  const next: ImageConfig = { ...base, created, rootfs: { type: 'layers', diff_ids: [...base.rootfs.diff_ids, diffId] }, history: [...history, { created, ...entry }] };
  return { bytes: json(next), mediaType: MEDIA_TYPES.ociConfig };
}

/** An OCI manifest for a config and layers. */
export function ociManifest(config: Descriptor, layers: Descriptor[], annotations?: Record<string, string>): NewDocument {
  const m: ImageManifest = { schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest, config, layers };
  if (annotations && Object.keys(annotations).length) m.annotations = annotations;
  return { bytes: json(m), mediaType: MEDIA_TYPES.ociManifest };
}

/** The manifest of `base` (in OCI media types) with another config and `layer` added on top. */
export function committedManifest(base: ImageManifest, config: Descriptor, layer: Descriptor): NewDocument {
  const oci = toOciManifest(base) ?? base;
  return ociManifest(config, [...oci.layers, layer], oci.annotations);
}
