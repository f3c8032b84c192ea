/**
 * One layer unpacked into the pool the way containerd's unpacker does it: the committed snapshot
 * named by the layer's chain id is reused when present; otherwise an active snapshot
 * `extract/<random>/<chain id>` of the parent chain is made, mounted through the daemon, the
 * layer blob applied to it in a worker process (fs-tasks.ts), unmounted, and committed as the
 * chain id with the layer's diff id and content size as labels. On any failure the extraction
 * snapshot is removed (it may hold half a layer); a crash leaves it for the next prune.
 */
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Pool } from '../pool/pool.js';
import { nowString } from '../snapshots/clock.js';
import type { ApplySummary } from './apply-summary.js';
import type { Digest } from './digest.js';
import type { FsMounter } from './fs-mounter.js';
import { runInWorker } from './fs-worker-client.js';
import { EXTRACT_PREFIX, LABELS } from './image-records.js';
import type { ImageStore } from './image-store.js';
import type { Descriptor } from './oci-types.js';

/** One layer of a loaded, imported or committed image. */
export interface LayerResult {
  index: number;
  chainId: Digest;
  diffId: Digest;
  /** The blob (as stored). */
  digest: Digest;
  size: number;
  /** True when the layer's snapshot was there already (nothing applied). */
  reused: boolean;
  /** Bytes of file content (tar header sizes, as `docker history` counts them); null when unknown. */
  contentSize: number | null;
  /** What applying it did (absent when reused). */
  applied?: Pick<ApplySummary, 'entries' | 'files' | 'dirs' | 'symlinks' | 'hardlinks' | 'whiteouts' | 'opaqueDirs' | 'bytes' | 'skippedCount'>;
}

/** A layer to unpack: its place, chain and blob (already in the content store). */
export interface LayerToUnpack {
  index: number;
  /** The chain id of the layer below (undefined for the bottom layer). */
  parent: Digest | undefined;
  chainId: Digest;
  diffId: Digest;
  blob: Descriptor;
  /** For messages: "layer 2 (sha256:...)". */
  name: string;
}

/** What unpacking needs: the records, the daemon's mounts, a scratch directory, a stop signal. */
export interface UnpackContext {
  pool: Pool;
  store: ImageStore;
  mounter: FsMounter;
  scratch: string;
  signal?: AbortSignal | undefined;
}

/** The content size label of a layer's snapshot, or null. */
export function contentSizeOf(store: ImageStore, chainId: string): number | null {
  const n = Number(store.snapshots.stat(chainId).labels[LABELS.contentSize]);
  return Number.isFinite(n) ? n : null;
}

/** The committed snapshot of `l` (see the module comment). */
export async function unpackLayer(ctx: UnpackContext, l: LayerToUnpack): Promise<LayerResult> {
  const base = { index: l.index, chainId: l.chainId, diffId: l.diffId, digest: l.blob.digest, size: l.blob.size };
  const snaps = ctx.store.snapshots;
  if (snaps.has(l.chainId)) return { ...base, reused: true, contentSize: contentSizeOf(ctx.store, l.chainId) };
  const key = `${EXTRACT_PREFIX}${randomBytes(8).toString('hex')}/${l.chainId}`;
  const { device } = await snaps.create('active', key, l.parent ?? '', { [LABELS.extract]: nowString() });
  try {
    const dir = join(ctx.scratch, `layer-${l.index}`);
    await mkdir(dir);
    const mt = await ctx.mounter.mount(device, dir, { readOnly: false });
    let summary: ApplySummary;
    let detached: boolean;
    try {
      summary = await runInWorker({ op: 'apply', root: mt.dir, blob: ctx.store.content.path(l.blob.digest), diffId: l.diffId, layer: l.name }, { signal: ctx.signal });
    } finally {
      detached = await mt.release();
    }
    // Still attached (someone else holds the device): the committed layer is an O(1) snapshot of it.
    await snaps.commit(l.chainId, key, { [LABELS.diffId]: l.diffId, [LABELS.contentSize]: String(summary.bytes) }, { inUse: !detached || ctx.pool.inUseById(device.id) });
    const { entries, files, dirs, symlinks, hardlinks, whiteouts, opaqueDirs, bytes, skippedCount } = summary;
    return { ...base, reused: false, contentSize: summary.bytes, applied: { entries, files, dirs, symlinks, hardlinks, whiteouts, opaqueDirs, bytes, skippedCount } };
  } catch (err) {
    if (snaps.has(key)) await ctx.store.discard(key).catch(() => undefined);
    throw err;
  }
}
