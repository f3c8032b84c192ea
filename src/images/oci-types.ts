/**
 * The OCI image documents (descriptor, index, manifest, config; Docker's v2 schema 2 and
 * manifest lists have the same shape) and their validation: each parser takes the bytes of a
 * document and returns it typed, or throws a BadImageError saying which field of which
 * document is wrong.
 */
import { BadImageError } from '../errors.js';
import { type Digest, isDigest } from './digest.js';

/** A platform as indexes give it. */
export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

/** A content descriptor. */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
}

/** An image index or Docker manifest list. */
export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

/** An image manifest (OCI or Docker v2 schema 2). */
export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** One entry of a config's history. */
export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** An image config (the parts this layer reads; the rest is kept as it was). */
export interface ImageConfig {
  architecture: string;
  os: string;
  created?: string;
  author?: string;
  config?: Record<string, unknown>;
  rootfs: { type: 'layers'; diff_ids: Digest[] };
  history?: HistoryEntry[];
  [key: string]: unknown;
}

/** The ref-name annotation of OCI index entries (a tag). */
export const REF_NAME = 'org.opencontainers.image.ref.name';
/** containerd's full image name annotation (docker 25+ `docker save` writes it too). */
export const IMAGE_NAME = 'io.containerd.image.name';

function fail(where: string, what: string): never {
  throw new BadImageError(`Cannot read ${where}: ${what}`, { document: where });
}

function object(v: unknown, where: string, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(where, `${field} is not an object`);
  return v as Record<string, unknown>;
}

function stringMap(v: unknown, where: string, field: string): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  const o = object(v, where, field);
  for (const [k, x] of Object.entries(o)) if (typeof x !== 'string') fail(where, `${field}.${k} is not a string`);
  return o as Record<string, string>;
}

/** Parses JSON bytes into an object, or throws a BadImageError naming the document. */
export function parseJson(bytes: Uint8Array, where: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    fail(where, `not JSON (${(err as Error).message})`);
  }
  return object(v, where, 'the document');
}

/** Validates a descriptor found at `field` of `where`. */
export function parseDescriptor(v: unknown, where: string, field: string): Descriptor {
  const o = object(v, where, field);
  if (typeof o.mediaType !== 'string' || o.mediaType === '') fail(where, `${field}.mediaType is missing`);
  if (!isDigest(o.digest)) fail(where, `${field}.digest ${JSON.stringify(o.digest)} is not a sha256 digest`);
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) fail(where, `${field}.size ${JSON.stringify(o.size)} is not a byte count`);
  const d: Descriptor = { mediaType: o.mediaType, digest: o.digest, size: o.size };
  const ann = stringMap(o.annotations, where, `${field}.annotations`);
  if (ann) d.annotations = ann;
  if (o.platform !== undefined) {
    const p = object(o.platform, where, `${field}.platform`);
    if (typeof p.architecture !== 'string' || typeof p.os !== 'string') fail(where, `${field}.platform needs architecture and os`);
    d.platform = { architecture: p.architecture, os: p.os };
    if (typeof p.variant === 'string') d.platform.variant = p.variant;
  }
  if (Array.isArray(o.urls)) d.urls = o.urls.filter((u): u is string => typeof u === 'string');
  return d;
}

function schema2(o: Record<string, unknown>, where: string): void {
  if (o.schemaVersion !== 2) fail(where, `schemaVersion is ${JSON.stringify(o.schemaVersion)}, expected 2`);
}

/** Parses an image index (or Docker manifest list). */
export function parseIndex(bytes: Uint8Array, where: string): ImageIndex {
  const o = parseJson(bytes, where);
  schema2(o, where);
  if (!Array.isArray(o.manifests)) fail(where, 'manifests is not a list');
  const idx: ImageIndex = { schemaVersion: 2, manifests: o.manifests.map((m, i) => parseDescriptor(m, where, `manifests[${i}]`)) };
  if (typeof o.mediaType === 'string') idx.mediaType = o.mediaType;
  const ann = stringMap(o.annotations, where, 'annotations');
  if (ann) idx.annotations = ann;
  return idx;
}

/** Parses an image manifest. */
export function parseManifest(bytes: Uint8Array, where: string): ImageManifest {
  const o = parseJson(bytes, where);
  schema2(o, where);
  if (!Array.isArray(o.layers)) fail(where, 'layers is not a list');
  const m: ImageManifest = {
    schemaVersion: 2,
    config: parseDescriptor(o.config, where, 'config'),
    layers: o.layers.map((l, i) => parseDescriptor(l, where, `layers[${i}]`)),
  };
  if (typeof o.mediaType === 'string') m.mediaType = o.mediaType;
  const ann = stringMap(o.annotations, where, 'annotations');
  if (ann) m.annotations = ann;
  return m;
}

/** Parses an image config; `rootfs.diff_ids` must be sha256 digests. */
export function parseConfig(bytes: Uint8Array, where: string): ImageConfig {
  const o = parseJson(bytes, where);
  const rootfs = object(o.rootfs, where, 'rootfs');
  if (rootfs.type !== 'layers') fail(where, `rootfs.type is ${JSON.stringify(rootfs.type)}, expected "layers"`);
  if (!Array.isArray(rootfs.diff_ids)) fail(where, 'rootfs.diff_ids is not a list');
  rootfs.diff_ids.forEach((d, i) => {
    if (!isDigest(d)) fail(where, `rootfs.diff_ids[${i}] ${JSON.stringify(d)} is not a sha256 digest`);
  });
  if (typeof o.architecture !== 'string' || typeof o.os !== 'string') fail(where, 'architecture and os are required');
  if (o.history !== undefined && !Array.isArray(o.history)) fail(where, 'history is not a list');
  return o as ImageConfig;
}
