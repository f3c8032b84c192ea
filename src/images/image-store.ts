/**
 * The image CLI's records on a pool (see image-records.ts for the scheme): images and containers
 * read from the snapshot labels of namespace `thinpool`, their manifests and configs from the
 * content store, tags moved in one commit, listings (`image ls`, `image history`,
 * `container ls`) and the garbage collection of what no image and no container needs.
 *
 * Nothing here mounts anything, and nothing here serializes callers: the image service runs
 * every change one at a time.
 */
import { isAbsolute } from 'node:path';
import { NotFoundError, UsageError } from '../errors.js';
import type { DeviceRecord } from '../pool/catalog-slots.js';
import type { Pool } from '../pool/pool.js';
import { SnapshotStore } from '../snapshots/snapshot-store.js';
import type { SnapshotInfo } from '../snapshots/types.js';
import { ContentStore } from './content-store.js';
import { type Digest, isDigest, shortDigest } from './digest.js';
import {
  type ContainerRef, EXTRACT_PREFIX, IMAGES_NAMESPACE, type ImageRef, LABELS, containerOf, isContainerId, tagsOf,
} from './image-records.js';
import { MEDIA_TYPES } from './media-types.js';
import { type Descriptor, type ImageConfig, type ImageManifest, parseConfig, parseManifest } from './oci-types.js';

/** An image's manifest as stored: its bytes, parsed form and descriptor. */
export interface StoredManifest {
  descriptor: Descriptor;
  bytes: Buffer;
  manifest: ImageManifest;
}

/** `image ls`: one row per tag. */
export interface ImageSummary {
  name: string;
  manifest: Digest;
  /** The config digest (what Docker calls the image id). */
  config: Digest;
  created: string | null;
  layers: number;
  /** Bytes of file content in all layers (as `docker images` sums them). */
  contentSize: number | null;
  /** Pool bytes the image's layers hold themselves (each layer's beyond the layer below it). */
  poolBytes: number;
  /** Containers made from this manifest. */
  containers: number;
}

/** One row of `image history` (newest first). */
export interface HistoryRow {
  created: string | null;
  createdBy: string | null;
  comment: string | null;
  /** True for history entries that made no layer (ENV, CMD, ...). */
  emptyLayer: boolean;
  /** The layer the entry made. */
  layer?: HistoryLayer;
}

/** A layer in `image history`. */
export interface HistoryLayer {
  /** 0 = bottom. */
  index: number;
  diffId: Digest;
  chainId: Digest;
  /** The layer blob as stored (compressed). */
  blob: Digest;
  blobSize: number;
  /** Bytes of file content in the layer (tar header sizes, `docker history`'s SIZE); null when unknown. */
  contentSize: number | null;
  /**
   * Bytes of the pool blocks this layer's device maps that the layer below it (the base device for
   * the first) does not map to the same block: what the layer holds itself; layers above it and
   * containers share these blocks until they write them.
   */
  exclusiveBytes: number;
  exclusiveBlocks: number;
}

/** `container ls`: one row per container. */
export interface ContainerSummary extends ContainerRef {
  /** The thin device holding the container's file system. */
  device: string;
  deviceId: number;
  /** Pool bytes only this container's device maps (its writes), and those it shares (its image's). */
  exclusiveBytes: number;
  sharedBytes: number;
  /** Where `container mount` mounted it, when mounted. */
  mounted: string | null;
}

/** What {@link ImageStore.prune} removed. */
export interface PruneResult {
  /** Snapshot keys removed: unfinished extractions, then layers no image or container needs. */
  snapshots: string[];
  /** Blobs no image or container references. */
  blobs: number;
  blobBytes: number;
  /** Why blobs were kept, when a referenced manifest could not be read. */
  blobsKept?: string;
}

export class ImageStore {
  readonly snapshots: SnapshotStore;
  readonly content: ContentStore;

  constructor(readonly pool: Pool) {
    this.snapshots = new SnapshotStore(pool, { namespace: IMAGES_NAMESPACE });
    this.content = new ContentStore(pool.dir);
  }

  // ---- images -----------------------------------------------------------------------------

  /** Every tagged image, by name. */
  images(): ImageRef[] {
    const out: ImageRef[] = [];
    for (const s of this.snapshots.list(['kind==committed'])) {
      for (const [name, manifest] of tagsOf(s.labels)) if (isDigest(s.name)) out.push({ name, manifest, top: s.name });
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * The image `ref` names: a name (`busybox:latest`, or `busybox` for `busybox:latest`), or a
   * manifest or config digest (`sha256:...`) or its unique hex prefix of at least 4 digits.
   */
  async image(ref: string): Promise<ImageRef> {
    const all = this.images();
    const exact = all.find((i) => i.name === ref) ?? (!ref.includes(':') ? all.find((i) => i.name === `${ref}:latest`) : undefined);
    if (exact) return exact;
    const hex = ref.replace(/^sha256:/, '');
    if (/^[0-9a-f]{4,64}$/.test(hex)) {
      const hits: ImageRef[] = [];
      for (const i of all) {
        if (i.manifest.slice(7).startsWith(hex)) hits.push(i);
        else {
          const config = await this.readManifest(i.manifest).then((m) => m.manifest.config.digest, () => undefined);
          if (config?.slice(7).startsWith(hex)) hits.push(i);
        }
      }
      const manifests = new Set(hits.map((h) => h.manifest));
      if (manifests.size === 1) return hits[0]!;
      if (manifests.size > 1) throw new UsageError(`Cannot choose image ${ref}: it matches ${hits.map((h) => h.name).join(', ')}`, { ref });
    }
    throw new NotFoundError(`Cannot find image ${ref}: no image has that name${all.length ? ` (images: ${all.map((i) => i.name).join(', ')})` : ''}`, { ref });
  }

  /** A manifest from the content store, checked against its digest. */
  async readManifest(digest: Digest): Promise<StoredManifest> {
    const bytes = await this.content.read(digest);
    const manifest = parseManifest(bytes, `image manifest ${digest}`);
    return { bytes, manifest, descriptor: { mediaType: manifest.mediaType ?? MEDIA_TYPES.ociManifest, digest, size: bytes.length } };
  }

  /** The config a manifest names (parsed; unknown fields kept). */
  async readConfig(m: ImageManifest): Promise<ImageConfig> {
    return parseConfig(await this.content.read(m.config.digest), `image config ${m.config.digest}`);
  }

  /**
   * Tags the image whose manifest is `manifest` and whose top layer is the committed snapshot
   * `top` as each of `names`, in one commit: a name that tagged another layer moves.
   */
  async tag(names: readonly string[], manifest: Digest, top: Digest): Promise<void> {
    const edits = new Map<string, Record<string, string | null>>();
    const edit = (key: string) => {
      let e = edits.get(key);
      if (!e) edits.set(key, (e = {}));
      return e;
    };
    const current = new Map(this.images().map((i) => [i.name, i]));
    for (const n of names) {
      const was = current.get(n);
      if (was && was.top !== top) edit(was.top)[LABELS.tag + n] = null;
      edit(top)[LABELS.tag + n] = manifest;
    }
    await this.snapshots.relabel([...edits].map(([key, set]) => ({ key, set })));
  }

  /** Removes the tag `name` (one commit). */
  async untag(name: string): Promise<void> {
    const img = this.images().find((i) => i.name === name);
    if (!img) throw new NotFoundError(`Cannot remove image ${name}: no image has that name`, { name });
    await this.snapshots.relabel([{ key: img.top, set: { [LABELS.tag + name]: null } }]);
  }

  // ---- containers -------------------------------------------------------------------------

  /** Every container, oldest first. */
  containers(): ContainerRef[] {
    const out: ContainerRef[] = [];
    for (const s of this.snapshots.list(['kind==active'])) {
      const c = containerOf(s);
      if (c) out.push(c);
    }
    return out.sort((a, b) => (a.created < b.created ? -1 : a.created > b.created ? 1 : 0));
  }

  /** The container `ref` names: its id, its name, or a unique prefix of its id. */
  container(ref: string): ContainerRef {
    const all = this.containers();
    const hit = all.find((c) => c.id === ref) ?? all.find((c) => c.name === ref);
    if (hit) return hit;
    if (/^[0-9a-f]{1,63}$/.test(ref)) {
      const hits = all.filter((c) => c.id.startsWith(ref));
      if (hits.length === 1) return hits[0]!;
      if (hits.length > 1) throw new UsageError(`Cannot choose container ${ref}: ${hits.length} container ids start with it`, { ref });
    }
    throw new NotFoundError(`Cannot find container ${ref}: no container has that id or name`, { ref });
  }

  /** The device holding a container's (or a layer's) file system. */
  device(key: string): DeviceRecord {
    return this.snapshots.device(key);
  }

  // ---- listings ---------------------------------------------------------------------------

  /** `image ls`. */
  async list(): Promise<ImageSummary[]> {
    const containers = this.containers();
    const out: ImageSummary[] = [];
    for (const i of this.images()) {
      const { manifest } = await this.readManifest(i.manifest);
      const config = await this.readConfig(manifest).catch(() => undefined);
      let contentSize: number | null = 0;
      let poolBytes = 0;
      for (const key of this.chainOf(i.top)) {
        const s = this.snapshots.stat(key);
        const n = Number(s.labels[LABELS.contentSize]);
        contentSize = contentSize === null || !Number.isFinite(n) ? null : contentSize + n;
        poolBytes += (await this.snapshots.usage(key)).size;
      }
      out.push({
        name: i.name, manifest: i.manifest, config: manifest.config.digest, created: config?.created ?? null, layers: manifest.layers.length,
        contentSize, poolBytes, containers: containers.filter((c) => c.manifest === i.manifest).length,
      });
    }
    return out;
  }

  /** Chain ids from `top` down to the bottom layer. */
  private chainOf(top: string): string[] {
    const out: string[] = [];
    for (let k: string | undefined = top; k; k = this.snapshots.stat(k).parent || undefined) out.push(k);
    return out;
  }

  /** `image history`: the config's history, newest first, each entry that made a layer with it. */
  async history(ref: string): Promise<HistoryRow[]> {
    const img = await this.image(ref);
    const { manifest } = await this.readManifest(img.manifest);
    const config = await this.readConfig(manifest);
    const chain = this.chainOf(img.top).reverse();
    const bs = this.pool.blockSize;
    const layers: HistoryLayer[] = [];
    for (const [index, d] of manifest.layers.entries()) {
      const chainId = chain[index] as Digest;
      const s = this.snapshots.stat(chainId);
      const n = Number(s.labels[LABELS.contentSize]);
      const u = await this.snapshots.usage(chainId);
      layers.push({
        index, diffId: config.rootfs.diff_ids[index]!, chainId, blob: d.digest, blobSize: d.size,
        contentSize: Number.isFinite(n) ? n : null, exclusiveBytes: u.size, exclusiveBlocks: u.size / bs,
      });
    }
    const rows: HistoryRow[] = [];
    let next = 0;
    for (const h of config.history ?? []) {
      const row: HistoryRow = { created: h.created ?? null, createdBy: h.created_by ?? null, comment: h.comment ?? null, emptyLayer: !!h.empty_layer };
      if (!h.empty_layer && next < layers.length) row.layer = layers[next++];
      rows.push(row);
    }
    // Layers the history does not describe (configs without history).
    for (; next < layers.length; next++) rows.push({ created: null, createdBy: null, comment: null, emptyLayer: false, layer: layers[next] });
    return rows.reverse();
  }

  /** `container ls`; `mountedAt` says where a container's device is mounted (from the daemon). */
  async containerList(mountedAt: (c: ContainerRef, dev: DeviceRecord) => Promise<string | null>): Promise<ContainerSummary[]> {
    const listing = new Map((await this.pool.devices()).map((d) => [d.id, d]));
    const bs = this.pool.blockSize;
    const out: ContainerSummary[] = [];
    for (const c of this.containers()) {
      const dev = this.device(c.id);
      const l = listing.get(dev.id);
      out.push({
        ...c, device: dev.name ?? `id:${dev.id}`, deviceId: dev.id,
        exclusiveBytes: (l?.exclusiveBlocks ?? 0) * bs, sharedBytes: (l?.sharedBlocks ?? 0) * bs, mounted: await mountedAt(c, dev),
      });
    }
    return out;
  }

  // ---- garbage collection -------------------------------------------------------------------

  /** Removes a snapshot now, or (its device in use) its record now and its device once released. */
  async discard(key: string): Promise<void> {
    const dev = this.snapshots.device(key);
    await this.snapshots.remove(key, { defer: this.pool.inUseById(dev.id) });
  }

  /**
   * Removes what no image and no container needs: snapshots of interrupted extractions, layers
   * under no tag and no container (leaves first), blobs no tagged image and no container's
   * manifest references, and the content store's unfinished writes. The caller makes sure
   * nothing is being loaded or committed meanwhile.
   */
  async prune(): Promise<PruneResult> {
    const removed: string[] = [];
    for (const s of this.snapshots.list(['kind==active'])) {
      if (!s.name.startsWith(EXTRACT_PREFIX)) continue;
      await this.discard(s.name);
      removed.push(s.name);
    }
    for (;;) {
      const leaves = this.snapshots.list(['kind==committed']).filter((s: SnapshotInfo) => tagsOf(s.labels).size === 0 && this.snapshots.children(s.name).length === 0);
      if (!leaves.length) break;
      for (const s of leaves) {
        await this.discard(s.name);
        removed.push(s.name);
      }
    }
    const roots = new Set<Digest>([...this.images().map((i) => i.manifest), ...this.containers().map((c) => c.manifest)]);
    const keep = new Set<Digest>();
    let blobsKept: string | undefined;
    for (const m of roots) {
      keep.add(m);
      try {
        const { manifest } = await this.readManifest(m);
        keep.add(manifest.config.digest);
        for (const l of manifest.layers) keep.add(l.digest);
      } catch (err) {
        blobsKept = `manifest ${shortDigest(m)} cannot be read (${(err as Error).message}), so no blob was removed`;
      }
    }
    let blobs = 0;
    let blobBytes = 0;
    if (!blobsKept) {
      for (const b of await this.content.list()) {
        if (keep.has(b.digest)) continue;
        if (await this.content.delete(b.digest)) {
          blobs++;
          blobBytes += b.size;
        }
      }
    }
    await this.content.cleanIngest();
    return { snapshots: removed, blobs, blobBytes, ...(blobsKept ? { blobsKept } : {}) };
  }
}

/** Refuses a relative path (the daemon's working directory is not the caller's). */
export function checkAbsolute(path: string, what: string): void {
  if (typeof path !== 'string' || !isAbsolute(path)) throw new UsageError(`Cannot use ${what} ${JSON.stringify(path)}: an absolute path is needed`, { path });
}

export { isContainerId };
