/**
 * The image operations of the CLI (`thinpool image ...`; the containers' are in
 * container-service.ts) on one pool, run by the process that owns it (the daemon, or a daemon
 * started for one command). Layers are unpacked as containerd's unpacker does it
 * (layer-unpack.ts). Every change runs alone (one mutex, shared with the containers), in an
 * order that keeps the pool consistent at every step: blobs are stored (and synced) before the
 * commit that references them, layers are committed before the tag that names them, and a tag is
 * one commit. A crash anywhere leaves the old or the new image and at worst unreferenced layers
 * and blobs, which {@link ImageService.prune} (also run by `image rm` and `pool cleanup`) removes.
 *
 * Mounts come from the daemon through {@link FsMounter}; operations that need none (listings,
 * save, rm, prune, container create and rm) also work on a pool this process opened without
 * serving it.
 */
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PreconditionError, UsageError } from '../errors.js';
import { Mutex } from '../pdata/mutex.js';
import type { Pool } from '../pool/pool.js';
import { ContainerService, type ServiceCore } from './container-service.js';
import { openUncompressed } from './decompress.js';
import { type Digest, chainIds } from './digest.js';
import { DigestStream } from './digest-stream.js';
import type { FsMounter } from './fs-mounter.js';
import type { ChangeLine } from './fs-tasks.js';
import { importConfig, ociManifest } from './image-documents.js';
import { checkImageName } from './image-records.js';
import { type HistoryRow, type ImageSummary, ImageStore, type PruneResult, checkAbsolute } from './image-store.js';
import { layerName } from './image-source.js';
import { type LayerResult, type LayerToUnpack, unpackLayer } from './layer-unpack.js';
import { type Compression, MEDIA_TYPES } from './media-types.js';
import { writeOciArchive } from './oci-archive-writer.js';
import { writeOciLayout } from './oci-layout-writer.js';
import type { Descriptor } from './oci-types.js';
import { readImage } from './read-image.js';
import { removeStaleScratch } from './scratch-dirs.js';

export type { LayerResult };

/** What `image load`, `image import` and `container commit` made. */
export interface ImageResult {
  names: string[];
  manifest: Digest;
  config: Digest;
  layers: LayerResult[];
  /** `container commit`: the changes the new layer holds. */
  changes?: ChangeLine[];
}

/** What `image save` wrote. */
export interface SaveResult {
  name: string;
  manifest: Digest;
  out: string;
  format: 'dir' | 'tar';
  blobs: number;
  bytes: number;
}

/** What `image rm` did. */
export interface RemoveImageResult extends PruneResult {
  untagged: string;
}

export class ImageService implements ServiceCore {
  readonly store: ImageStore;
  /** `container ...`. */
  readonly containers: ContainerService;
  private readonly mutex = new Mutex();
  private fsMounter: FsMounter | undefined;
  private controller = new AbortController();

  constructor(readonly pool: Pool) {
    this.store = new ImageStore(pool);
    this.containers = new ContainerService(this);
  }

  /** Gives the service the daemon's mounts. */
  setMounter(m: FsMounter | undefined): void {
    this.fsMounter = m;
  }

  /** Aborted by {@link stop}: running file-system work (a worker) is killed. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /**
   * Stops what runs (its worker is killed; the operation fails, removing what it half made) and
   * waits until no operation runs; later calls run normally. The daemon calls it before it
   * releases its mounts.
   */
  async stop(): Promise<void> {
    this.controller.abort();
    await this.mutex.run(async () => undefined);
    this.controller = new AbortController();
  }

  /** The daemon's mounts, when this process serves the pool. */
  get mounter(): FsMounter | undefined {
    return this.fsMounter;
  }

  /** The daemon's mounts, or a UsageError naming `action` and the daemon to start. */
  needMounter(action: string): FsMounter {
    if (!this.fsMounter) throw new UsageError(`Cannot ${action}: the pool is not served (mounting needs the daemon's NBD socket); start thinpool serve (or thinpool snapshotter) first`);
    return this.fsMounter;
  }

  /** A new scratch directory under `POOL/run/images` (same file system as the blobs). */
  async scratch(): Promise<string> {
    await mkdir(this.scratchRoot, { recursive: true, mode: 0o700 });
    return mkdtemp(join(this.scratchRoot, 'op-'));
  }

  private get scratchRoot(): string {
    return join(this.pool.dir, 'run', 'images');
  }

  /** Runs a change alone (every image and container change goes through here). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.mutex.run(fn);
  }

  /** Unpacks one layer with this service's mounts and stop signal (layer-unpack.ts). */
  unpack(m: FsMounter, scratch: string, l: LayerToUnpack): Promise<LayerResult> {
    return unpackLayer({ pool: this.pool, store: this.store, mounter: m, scratch, signal: this.signal }, l);
  }

  // ---- images -----------------------------------------------------------------------------

  /** `image load`: an OCI layout (dir or tar) or `docker save` archive at `path`, tagged `names` (default: the archive's). */
  load(path: string, opts: { names?: string[]; ref?: string } = {}): Promise<ImageResult> {
    checkAbsolute(path, 'image archive');
    const m = this.needMounter(`load ${path}`);
    for (const n of opts.names ?? []) checkImageName(n);
    return this.exclusive(async () => {
      const scratch = await this.scratch();
      try {
        const src = await readImage(path, { ...(opts.ref !== undefined ? { ref: opts.ref } : {}), tmpDir: scratch });
        try {
          const names = opts.names?.length ? opts.names : src.tags;
          if (!names.length) throw new UsageError(`Cannot load ${path}: the archive gives the image no name; name it with --name`, { path });
          for (const n of names) checkImageName(n);
          const content = this.store.content;
          // Blobs first, each synced: a commit never references a blob that is not on disk.
          for (const l of src.layers) {
            if (!(await content.has(l.descriptor.digest))) {
              await content.ingest(await src.openBlob(l.descriptor, `layer ${l.index + 1}`), { digest: l.descriptor.digest, size: l.descriptor.size, name: layerName(l) });
            }
          }
          await content.put(src.configBytes, { digest: src.manifest.config.digest, size: src.manifest.config.size, name: 'image config' });
          await content.put(src.manifestBytes, { digest: src.manifestDescriptor.digest, size: src.manifestDescriptor.size, name: 'image manifest' });
          const chain = chainIds(src.layers.map((l) => l.diffId));
          const layers: LayerResult[] = [];
          for (const l of src.layers) {
            layers.push(await this.unpack(m, scratch, { index: l.index, parent: chain[l.index - 1], chainId: chain[l.index]!, diffId: l.diffId, blob: l.descriptor, name: layerName(l) }));
          }
          await this.store.tag(names, src.manifestDescriptor.digest, chain[chain.length - 1]!);
          return { names, manifest: src.manifestDescriptor.digest, config: src.manifest.config.digest, layers };
        } finally {
          await src.close();
        }
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    });
  }

  /** `image import`: a one-layer image `name` from the root file system tar at `path` (plain, gzip or zstd). */
  importTar(name: string, path: string): Promise<ImageResult> {
    checkAbsolute(path, 'root file system tar');
    checkImageName(name);
    const m = this.needMounter(`import ${path}`);
    return this.exclusive(async () => {
      const scratch = await this.scratch();
      try {
        const content = this.store.content;
        const blob = await content.ingest(createReadStream(path, { highWaterMark: 256 * 1024 }), { name: path });
        const detected: { c: Compression } = { c: 'none' };
        const hash = new DigestStream();
        await pipeline(openUncompressed(await content.open(blob.digest), { name: `the tar ${path}`, onDetected: (c) => (detected.c = c) }), hash, new Writable({ write: (_c, _e, cb) => cb() }));
        const compression = detected.c;
        const diffId = hash.digest;
        const created = new Date().toISOString();
        const config = importConfig(diffId, `thinpool image import ${basename(path)}`, created);
        const configBlob = await content.put(config.bytes);
        const mediaType = compression === 'gzip' ? MEDIA_TYPES.ociLayerGzip : compression === 'zstd' ? MEDIA_TYPES.ociLayerZstd : MEDIA_TYPES.ociLayer;
        const layerDesc: Descriptor = { mediaType, digest: blob.digest, size: blob.size };
        const manifest = ociManifest({ mediaType: config.mediaType, digest: configBlob.digest, size: configBlob.size }, [layerDesc]);
        const manifestBlob = await content.put(manifest.bytes);
        const layer = await this.unpack(m, scratch, { index: 0, parent: undefined, chainId: diffId, diffId, blob: layerDesc, name: `layer 1 (${blob.digest}) of ${path}` });
        await this.store.tag([name], manifestBlob.digest, diffId);
        return { names: [name], manifest: manifestBlob.digest, config: configBlob.digest, layers: [layer] };
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    });
  }

  /** `image save`: the image as an OCI layout at `out` (a directory, or a tar when it ends in `.tar`), blobs byte for byte. */
  save(ref: string, out: string): Promise<SaveResult> {
    checkAbsolute(out, 'output');
    return this.exclusive(async () => {
      const img = await this.store.image(ref);
      const { descriptor } = await this.store.readManifest(img.manifest);
      const images = [{ manifest: descriptor, refName: img.name }];
      const tar = out.endsWith('.tar');
      const saved = tar ? await writeOciArchive(out, await this.scratch(), this.store.content, images) : await writeOciLayout(out, this.store.content, images);
      return { name: img.name, manifest: img.manifest, out, format: tar ? 'tar' as const : 'dir' as const, blobs: saved.blobs, bytes: saved.bytes };
    });
  }

  /** `image ls`. */
  list(): Promise<ImageSummary[]> {
    return this.store.list();
  }

  /** `image history`. */
  history(ref: string): Promise<HistoryRow[]> {
    return this.store.history(ref);
  }

  /**
   * `image rm`: removes the tag, then whatever no image or container needs any more. Refused
   * while a container uses the image and no other tag names the same manifest.
   */
  removeImage(ref: string): Promise<RemoveImageResult> {
    return this.exclusive(async () => {
      const img = await this.store.image(ref);
      const others = this.store.images().filter((i) => i.manifest === img.manifest && i.name !== img.name);
      const users = this.store.containers().filter((c) => c.manifest === img.manifest);
      if (users.length && !others.length) {
        const u = users.map((c) => `${c.id.slice(0, 12)}${c.name ? ` (${c.name})` : ''}`).join(', ');
        throw new PreconditionError(`Cannot remove image ${img.name}: container${users.length > 1 ? 's' : ''} ${u} use${users.length > 1 ? '' : 's'} it; remove ${users.length > 1 ? 'them' : 'it'} first`, { image: img.name, containers: users.map((c) => c.id) });
      }
      await this.store.untag(img.name);
      return { untagged: img.name, ...(await this.store.prune()) };
    });
  }

  /**
   * `image prune` (and `pool cleanup`): what no image and no container needs, and the scratch
   * directories interrupted operations left (nothing runs meanwhile: the mutex is held).
   */
  prune(): Promise<PruneResult> {
    return this.exclusive(async () => {
      const r = await this.store.prune();
      await removeStaleScratch(this.scratchRoot);
      return r;
    });
  }

}
