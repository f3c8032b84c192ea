/**
 * How images and containers are recorded: no file of their own, only labels on snapshots in the
 * pool's catalog (namespace `thinpool`), so they change in the same commit as the devices, plus
 * the manifests, configs and layer blobs in the content store (`POOL/blobs/sha256`).
 *
 * - A **layer** is a committed snapshot keyed by its chain id, labelled with its diff id and its
 *   content size (bytes of file content, as `docker history` counts them).
 * - An **image tag** is a label `thinpool.image/NAME` = manifest digest on the committed snapshot
 *   of the image's top layer. Moving a tag is one commit (label off one layer, onto another).
 * - A **container** is an active snapshot of the image's top layer keyed by its 64-hex id,
 *   labelled with its name, the image name it was made from, that image's manifest digest and
 *   its volumes (JSON). Its creation time is the snapshot's own `created`.
 * - A layer being applied is an active snapshot `extract/<random>/<chain id>`; one left by a
 *   crash is garbage for the next prune.
 */
import { UsageError } from '../errors.js';
import { type Digest, isDigest } from './digest.js';

/** The snapshot namespace of the image CLI (containerd's service never lists it). */
export const IMAGES_NAMESPACE = 'thinpool';

/** Label names. */
export const LABELS = {
  /** Prefix of an image tag on its top layer: `thinpool.image/NAME` = manifest digest. */
  tag: 'thinpool.image/',
  /** A layer's diff id. */
  diffId: 'thinpool.layer/diff-id',
  /** Bytes of file content in the layer (tar header sizes, as `docker history` shows). */
  contentSize: 'thinpool.layer/content-size',
  /** When a layer's extraction began (on `extract/` snapshots). */
  extract: 'thinpool.extract/started',
  containerName: 'thinpool.container/name',
  /** The image name given at create time. */
  containerImage: 'thinpool.container/image',
  /** The manifest digest of that image (what the container keeps alive). */
  containerManifest: 'thinpool.container/manifest',
  /** JSON list of `{ host, path }`. */
  containerVolumes: 'thinpool.container/volumes',
} as const;

/** Key prefix of snapshots a layer is being applied to. */
export const EXTRACT_PREFIX = 'extract/';

/** A tagged image. */
export interface ImageRef {
  name: string;
  manifest: Digest;
  /** Chain id of the top layer (the snapshot carrying the tag). */
  top: Digest;
}

/** A host directory bound into a container. */
export interface Volume {
  /** Absolute path on the host. */
  host: string;
  /** Absolute path inside the container. */
  path: string;
}

/** A container as its snapshot records it. */
export interface ContainerRef {
  id: string;
  name: string | null;
  /** The image name given at create time. */
  image: string;
  manifest: Digest;
  /** Chain id of the image's top layer (the snapshot's parent). */
  parent: Digest;
  created: string;
  volumes: Volume[];
}

const ID_RE = /^[0-9a-f]{64}$/;
const IMAGE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@+]{0,254}$/;
const CONTAINER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** True for a container id (64 lowercase hex digits). */
export function isContainerId(s: string): boolean {
  return ID_RE.test(s);
}

/** Checks an image name (`busybox`, `busybox:1.36`, `localhost/app:v1`). */
export function checkImageName(name: string): void {
  if (typeof name !== 'string' || !IMAGE_NAME_RE.test(name) || ID_RE.test(name) || name.includes('//')) {
    throw new UsageError(`Cannot use ${JSON.stringify(name)} as an image name: expected letters, digits and ._-/:@+ (at most 255, not 64 hex digits)`, { name });
  }
}

/** Checks a container name (Docker's rule). */
export function checkContainerName(name: string): void {
  if (typeof name !== 'string' || !CONTAINER_NAME_RE.test(name) || ID_RE.test(name)) {
    throw new UsageError(`Cannot use ${JSON.stringify(name)} as a container name: expected [A-Za-z0-9][A-Za-z0-9_.-]* (at most 128, not 64 hex digits)`, { name });
  }
}

/** Checks volumes: absolute host and container paths without `..`. */
export function checkVolumes(volumes: readonly Volume[]): void {
  const seen = new Set<string>();
  for (const v of volumes) {
    for (const [what, p] of [['host directory', v.host], ['container path', v.path]] as const) {
      if (typeof p !== 'string' || !p.startsWith('/') || p.split('/').includes('..') || p.includes('\0') || p.includes(',')) {
        throw new UsageError(`Cannot use the volume ${v.host}:${v.path}: the ${what} must be an absolute path without '..' or ','`, { volume: `${v.host}:${v.path}` });
      }
    }
    const norm = v.path.replace(/\/+$/, '').replace(/\/+/g, '/');
    if (norm === '') throw new UsageError(`Cannot use the volume ${v.host}:${v.path}: it would cover the container's root`);
    if (seen.has(norm)) throw new UsageError(`Cannot use two volumes at ${v.path}`);
    seen.add(norm);
  }
}

/** The image tags a snapshot's labels carry: name -> manifest digest. */
export function tagsOf(labels: Record<string, string>): Map<string, Digest> {
  const out = new Map<string, Digest>();
  for (const [k, v] of Object.entries(labels)) if (k.startsWith(LABELS.tag) && isDigest(v)) out.set(k.slice(LABELS.tag.length), v);
  return out;
}

/** A container's record from its snapshot (undefined when the snapshot is not a container). */
export function containerOf(s: { name: string; kind: string; parent: string; labels: Record<string, string>; created: string }): ContainerRef | undefined {
  if (s.kind !== 'active' || !isContainerId(s.name)) return undefined;
  const manifest = s.labels[LABELS.containerManifest];
  if (!isDigest(manifest) || !isDigest(s.parent)) return undefined;
  let volumes: Volume[] = [];
  try {
    const v = JSON.parse(s.labels[LABELS.containerVolumes] ?? '[]') as unknown;
    if (Array.isArray(v)) volumes = v.filter((x): x is Volume => typeof x?.host === 'string' && typeof x?.path === 'string');
  } catch {
    volumes = [];
  }
  return {
    id: s.name,
    name: s.labels[LABELS.containerName] ?? null,
    image: s.labels[LABELS.containerImage] ?? '',
    manifest,
    parent: s.parent,
    created: s.created,
    volumes,
  };
}
