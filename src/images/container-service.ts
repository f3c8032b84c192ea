/**
 * The container operations of the CLI (`thinpool container ...`), over the image service's
 * records, mounts and mutex ({@link ServiceCore}). A container is an active snapshot of its
 * image's top layer (O(1) to create); mounting it puts its file system at
 * `POOL/run/containers/<id>/rootfs` with its volumes bound in (through the daemon, which keeps
 * it mounted until `container umount` or its own stop); diff and commit read it through a
 * mount of their own, next to a read-only mount of the image's top layer, in a worker process.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rm, rmdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ExistsError, PreconditionError, UsageError } from '../errors.js';
import type { DeviceRecord } from '../pool/catalog-slots.js';
import type { Pool } from '../pool/pool.js';
import { chainId, chainIds, shortDigest } from './digest.js';
import type { FsMounter, MountedTree } from './fs-mounter.js';
import type { ChangeLine } from './fs-tasks.js';
import { runInWorker } from './fs-worker-client.js';
import { committedConfig, committedManifest } from './image-documents.js';
import { type ContainerRef, type Volume, LABELS, checkContainerName, checkImageName, checkVolumes } from './image-records.js';
import type { ContainerSummary, ImageStore } from './image-store.js';
import type { ImageResult } from './image-service.js';
import { type LayerResult, type LayerToUnpack, contentSizeOf } from './layer-unpack.js';
import type { Descriptor } from './oci-types.js';

/** What the container operations share with the image service. */
export interface ServiceCore {
  readonly pool: Pool;
  readonly store: ImageStore;
  readonly mounter: FsMounter | undefined;
  readonly signal: AbortSignal;
  needMounter(action: string): FsMounter;
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  scratch(): Promise<string>;
  unpack(m: FsMounter, scratch: string, l: LayerToUnpack): Promise<LayerResult>;
}

/** A container as `container create` returns it. */
export interface CreatedContainer extends ContainerRef {
  device: string;
}

/** Where `container mount` mounted a container. */
export interface ContainerMount {
  id: string;
  path: string;
  volumes: Array<Volume & { at: string }>;
  /** True when it was mounted already. */
  already: boolean;
}

/** What `container rm` did. */
export interface RemoveContainerResult {
  id: string;
  name: string | null;
  /** Blocks only the container's device mapped: what its removal frees. */
  freedBlocks: number;
  freedBytes: number;
  /** True when the device is deleted later (still attached somewhere). */
  deferred: boolean;
}

export class ContainerService {
  constructor(private readonly core: ServiceCore) {}

  /** `container create`: an active snapshot of the image's top layer, O(1); returns its id. */
  create(imageRef: string, opts: { name?: string | undefined; volumes?: Volume[] | undefined } = {}): Promise<CreatedContainer> {
    if (opts.name !== undefined) checkContainerName(opts.name);
    const volumes = opts.volumes ?? [];
    checkVolumes(volumes);
    return this.core.exclusive(async () => {
      const img = await this.core.store.image(imageRef);
      if (opts.name !== undefined && this.core.store.containers().some((c) => c.name === opts.name)) {
        throw new ExistsError(`Cannot create container ${opts.name}: a container has that name`, { name: opts.name });
      }
      const id = randomBytes(32).toString('hex');
      const labels: Record<string, string> = { [LABELS.containerImage]: img.name, [LABELS.containerManifest]: img.manifest };
      if (opts.name !== undefined) labels[LABELS.containerName] = opts.name;
      if (volumes.length) labels[LABELS.containerVolumes] = JSON.stringify(volumes.map((v) => ({ host: v.host, path: v.path })));
      const { device } = await this.core.store.snapshots.create('active', id, img.top, labels);
      return { ...this.core.store.container(id), device: device.name ?? `id:${device.id}` };
    });
  }

  /** Where `container mount` mounts a container. */
  root(id: string): string {
    return join(this.core.pool.dir, 'run', 'containers', id, 'rootfs');
  }

  /** `container mount`: the container's file system at {@link containerRoot}, volumes bound in. Needs a daemon that keeps serving. */
  mount(ref: string): Promise<ContainerMount> {
    const m = this.core.needMounter(`mount container ${ref}`);
    if (!m.persistent) throw new UsageError(`Cannot mount container ${ref}: the mount would end with this command; start thinpool serve (or thinpool snapshotter) first`);
    return this.core.exclusive(async () => {
      const c = this.core.store.container(ref);
      const dev = this.core.store.device(c.id);
      const root = this.root(c.id);
      const made = await m.mountsOf(dev);
      if (made.includes(root)) return { id: c.id, path: root, volumes: [], already: true };
      await mkdir(root, { recursive: true, mode: 0o755 });
      const mounts: MountedTree[] = [await m.mount(dev, root, { readOnly: false })];
      try {
        const volumes: Array<Volume & { at: string }> = [];
        if (c.volumes.length) {
          const targets = await runInWorker({ op: 'volumeTargets', root, paths: c.volumes.map((v) => v.path) }, { signal: this.core.signal });
          for (const [i, v] of c.volumes.entries()) {
            await mkdir(v.host, { recursive: true });
            mounts.push(await m.bind(dev, v.host, targets[i]!));
            volumes.push({ ...v, at: targets[i]! });
          }
        }
        return { id: c.id, path: root, volumes, already: false };
      } catch (err) {
        for (const mt of mounts.reverse()) await mt.release().catch(() => undefined);
        throw err;
      }
    });
  }

  /** `container umount`: its volumes, then its file system. */
  umount(ref: string): Promise<{ id: string; unmounted: string[] }> {
    const m = this.core.needMounter(`unmount container ${ref}`);
    return this.core.exclusive(async () => {
      const c = this.core.store.container(ref);
      const dev = this.core.store.device(c.id);
      const dirs = (await m.mountsOf(dev)).reverse();
      if (!dirs.length) throw new PreconditionError(`Cannot unmount container ${ref}: it is not mounted`, { id: c.id });
      for (const d of dirs) await m.unmount(dev, d);
      return { id: c.id, unmounted: dirs };
    });
  }

  /**
   * Runs `fn` with the image's top layer mounted read-only at `lower` and the container's file
   * system at `upper`: a second mount of its device when `container mount` mounted it (so the
   * volumes bound there are not part of it), else a read-only one.
   */
  private async withTrees<T>(m: FsMounter, c: ContainerRef, scratch: string, fn: (lower: string, upper: string) => Promise<T>): Promise<T> {
    const layerDev = this.core.store.device(c.parent);
    const dev = this.core.store.device(c.id);
    const mounted = (await m.mountsOf(dev)).length > 0;
    const lowerDir = join(scratch, 'lower');
    const upperDir = join(scratch, 'upper');
    await mkdir(lowerDir);
    await mkdir(upperDir);
    const lower = await m.mount(layerDev, lowerDir, { readOnly: true });
    try {
      const upper = await m.mount(dev, upperDir, { readOnly: !mounted });
      try {
        return await fn(lower.dir, upper.dir);
      } finally {
        await upper.release();
      }
    } finally {
      await lower.release();
    }
  }

  /** `container diff`: added, changed and deleted paths against its image, as `docker diff`. */
  diff(ref: string): Promise<ChangeLine[]> {
    const m = this.core.needMounter(`diff container ${ref}`);
    return this.core.exclusive(async () => {
      const c = this.core.store.container(ref);
      const scratch = await this.core.scratch();
      try {
        return await this.withTrees(m, c, scratch, (lower, upper) => runInWorker({ op: 'diff', lower, upper }, { signal: this.core.signal }));
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    });
  }

  /**
   * `container commit`: a layer of the container's changes (whiteouts for deletions), applied on
   * the image's top layer like any loaded layer, and a new image `name` = the container's image
   * plus that layer. The container stays as it is.
   */
  commit(ref: string, name: string, opts: { comment?: string } = {}): Promise<ImageResult> {
    checkImageName(name);
    const m = this.core.needMounter(`commit container ${ref}`);
    return this.core.exclusive(async () => {
      const c = this.core.store.container(ref);
      const base = await this.core.store.readManifest(c.manifest);
      const baseConfig = await this.core.store.readConfig(base.manifest);
      const scratch = await this.core.scratch();
      try {
        const out = join(scratch, 'layer.tar.gz');
        const written = await this.withTrees(m, c, scratch, (lower, upper) => runInWorker({ op: 'writeLayer', lower, upper, out }, { signal: this.core.signal }));
        const content = this.core.store.content;
        await content.ingest(createReadStream(out), { digest: written.digest, size: written.size, name: `the layer of container ${c.id.slice(0, 12)}` });
        const layerDesc: Descriptor = { mediaType: written.mediaType, digest: written.digest, size: written.size };
        const newChain = chainId(c.parent, written.diffId);
        const layer = await this.core.unpack(m, scratch, {
          index: base.manifest.layers.length, parent: c.parent, chainId: newChain, diffId: written.diffId, blob: layerDesc,
          name: `the layer ${shortDigest(written.digest)} of container ${c.id.slice(0, 12)}`,
        });
        const created = new Date().toISOString();
        const config = committedConfig(baseConfig, written.diffId, { created_by: `thinpool container commit ${c.name ?? c.id.slice(0, 12)}`, ...(opts.comment ? { comment: opts.comment } : {}) }, created);
        const configBlob = await content.put(config.bytes);
        const manifest = committedManifest(base.manifest, { mediaType: config.mediaType, digest: configBlob.digest, size: configBlob.size }, layerDesc);
        const manifestBlob = await content.put(manifest.bytes);
        await this.core.store.tag([name], manifestBlob.digest, newChain);
        const lower = chainIds(baseConfig.rootfs.diff_ids);
        const layers: LayerResult[] = base.manifest.layers.map((d, i) => ({
          index: i, chainId: lower[i]!, diffId: baseConfig.rootfs.diff_ids[i]!, digest: d.digest, size: d.size, reused: true, contentSize: contentSizeOf(this.core.store, lower[i]!),
        }));
        return { names: [name], manifest: manifestBlob.digest, config: configBlob.digest, layers: [...layers, layer], changes: written.changes };
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    });
  }

  /** `container rm`: its snapshot goes, freeing the blocks only it mapped; volume directories stay. Refused while mounted. */
  remove(ref: string): Promise<RemoveContainerResult> {
    return this.core.exclusive(async () => {
      const c = this.core.store.container(ref);
      const dev = this.core.store.device(c.id);
      const mounts = this.core.mounter ? await this.core.mounter.mountsOf(dev) : [];
      if (mounts.length) throw new PreconditionError(`Cannot remove container ${ref}: it is mounted at ${mounts[0]}; thinpool container umount ${ref} first`, { id: c.id });
      const listing = (await this.core.pool.devices()).find((d) => d.id === dev.id);
      const deferred = this.core.pool.inUseById(dev.id);
      await this.core.store.snapshots.remove(c.id, { defer: deferred });
      // Its mount point (empty: it is not mounted); never anything below it.
      await rmdir(this.root(c.id)).catch(() => undefined);
      await rmdir(dirname(this.root(c.id))).catch(() => undefined);
      const freedBlocks = listing?.exclusiveBlocks ?? 0;
      return { id: c.id, name: c.name, freedBlocks, freedBytes: freedBlocks * this.core.pool.blockSize, deferred };
    });
  }

  /** `container ls`. */
  list(): Promise<ContainerSummary[]> {
    return this.core.store.containerList(async (c, dev: DeviceRecord) => {
      if (!this.core.mounter) return null;
      const root = this.root(c.id);
      return (await this.core.mounter.mountsOf(dev)).includes(root) ? root : null;
    });
  }
}
