/**
 * The image CLI tests' harness: a pool (with a small base device when asked, so its file system
 * fills quickly), a `thinpool serve` daemon on it (stopped by PID with SIGTERM, which unmounts
 * and releases everything; killed at test-process exit and followed by `pool cleanup`), the CLI
 * run against it, OCI layouts written from layer tars (no umoci needed), and what a test leaves
 * behind (loop devices, nbdfuse processes, mounts under the pool).
 */
import { spawnSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { type Digest, chainIds, sha256Digest } from '../../src/images/digest.js';
import type { ImageManifest } from '../../src/images/oci-types.js';
import { ensureBaseDevice } from '../../src/snapshots/base-device.js';
import { Pool } from '../../src/pool/pool.js';
import type { RemotePoolService } from '../../src/serve/remote-pool-service.js';
import { type CliResult, cli } from './cli.js';
import { CLI, type DaemonHandle, makePool, startDaemon } from './daemon.js';
import { putBlob, tagManifest, writeIndex } from './oci-layout-edit.js';
import { isRoot, which } from './oracles.js';
import { tempDir } from './tmp.js';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** Why the image CLI tests cannot run here, or null. */
export function imagesCliUnavailable(): string | null {
  if (!isRoot) return 'not root (mounting the snapshots needs loop devices and mount)';
  for (const t of ['nbdfuse', 'losetup', 'mkfs.ext4', 'debugfs']) if (!which(t)) return `${t} missing`;
  return null;
}

const cleanupAtExit = new Set<string>();
process.on('exit', () => {
  for (const dir of cleanupAtExit) spawnSync(process.execPath, [CLI, '-p', dir, 'pool', 'cleanup'], { stdio: 'ignore', timeout: 30_000 });
});

export interface TestPool {
  dir: string;
  daemon: DaemonHandle | undefined;
  /** Runs the CLI on this pool. */
  tp(args: string[]): Promise<CliResult>;
  /** Runs the CLI; fails the test on a nonzero exit; resolves to stdout. */
  ok(args: string[]): Promise<string>;
  json<T>(args: string[]): Promise<T>;
  /**
   * The daemon's control socket as a service (what the CLI talks to, without a process per
   * call: for loops and figures).
   */
  svc(): Promise<RemotePoolService>;
  /** Starts `thinpool serve` (when it does not run). */
  serve(): Promise<void>;
  /** Stops the daemon (SIGTERM), if running. */
  stopServe(): Promise<void>;
}

/**
 * A pool in a temp dir (`dataSize`, default 4 GiB, sparse), its base device made first when
 * `baseSize` is given (default: made by the first image command, 10 GiB), served unless
 * `serve: false`.
 */
export async function testPool(opts: { dataSize?: number; baseSize?: number; serve?: boolean; autoExtend?: boolean } = {}): Promise<TestPool> {
  const dir = await makePool({ dataSize: opts.dataSize ?? 4 * GiB, ...(opts.autoExtend !== undefined ? { autoExtend: opts.autoExtend } : {}) }, join(tempDir('thinpool-images-'), 'pool'));
  if (opts.baseSize) {
    const pool = await Pool.open(dir);
    try {
      await ensureBaseDevice(pool, { sizeBytes: opts.baseSize, fs: 'ext4' });
    } finally {
      await pool.close();
    }
  }
  cleanupAtExit.add(dir);
  const tp = (args: string[]) => cli(['-p', dir, ...args], { timeoutMs: 600_000 });
  const ok = async (args: string[]) => {
    const r = await tp(args);
    if (r.code !== 0) throw new Error(`thinpool ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  };
  let svc: RemotePoolService | undefined;
  const t: TestPool = {
    dir,
    daemon: undefined,
    async svc() {
      if (!t.daemon?.alive()) throw new Error('the pool is not served');
      svc ??= await t.daemon.service();
      return svc;
    },
    tp,
    ok,
    json: async <T>(args: string[]) => JSON.parse(await ok([...args, '--json'])) as T,
    async serve() {
      if (t.daemon?.alive()) return;
      t.daemon = await startDaemon({ dir, via: 'cli' });
    },
    async stopServe() {
      await svc?.close().catch(() => undefined);
      svc = undefined;
      if (t.daemon?.alive()) await t.daemon.stop();
      t.daemon = undefined;
    },
  };
  if (opts.serve !== false) await t.serve();
  return t;
}

/** Runs `fn` with a test pool; the daemon is stopped afterwards whatever happens. */
export async function withTestPool<T>(opts: Parameters<typeof testPool>[0], fn: (t: TestPool) => Promise<T>): Promise<T> {
  const t = await testPool(opts);
  try {
    return await fn(t);
  } finally {
    await t.stopServe().catch(async () => t.daemon?.kill());
  }
}

export { leftovers } from './leftovers.js';

// ---- OCI layouts from layer tars ---------------------------------------------------------------

/** One image of a layout: its tag and its layers (uncompressed tars, bottom first). */
export interface LayoutImage {
  tag: string;
  layers: Buffer[];
  /** Store the layers gzip'd (default) or plain. */
  gzip?: boolean;
  /** history created_by per layer. */
  createdBy?: string[];
}

/** What {@link writeLayout} wrote for an image. */
export interface WrittenImage {
  tag: string;
  manifest: Digest;
  config: Digest;
  layers: Digest[];
  diffIds: Digest[];
  chainIds: Digest[];
}

/** Writes an OCI image layout at `dir` holding `images` (blobs, configs, manifests, index). */
export async function writeLayout(dir: string, images: LayoutImage[]): Promise<WrittenImage[]> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeIndex(dir, { schemaVersion: 2, manifests: [] });
  const out: WrittenImage[] = [];
  for (const img of images) {
    const gzip = img.gzip ?? true;
    const diffIds = img.layers.map((t) => sha256Digest(t));
    const layers = [];
    for (const t of img.layers) layers.push(await putBlob(dir, gzip ? gzipSync(t) : t, gzip ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar'));
    const created = '2024-01-01T00:00:00Z';
    const config = {
      created, architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/bin'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: img.layers.map((_, i) => ({ created, created_by: img.createdBy?.[i] ?? `test layer ${i + 1}` })),
    };
    const configDesc = await putBlob(dir, Buffer.from(JSON.stringify(config)), 'application/vnd.oci.image.config.v1+json');
    const manifest: ImageManifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: configDesc, layers };
    const desc = await tagManifest(dir, manifest, img.tag);
    out.push({ tag: img.tag, manifest: desc.digest, config: configDesc.digest, layers: layers.map((l) => l.digest), diffIds, chainIds: chainIds(diffIds) });
  }
  return out;
}

/** `device ls --json` rows that carry image-CLI snapshots. */
export interface SnapshotDevice {
  name: string;
  id: number;
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
  snapshot?: { namespace?: string; key: string; kind: string; parent: string | null };
}

/** The pool's status and devices, from the daemon. */
export async function poolFigures(t: TestPool): Promise<{ blockSize: number; used: number; devices: SnapshotDevice[] }> {
  const svc = await t.svc();
  const st = await svc.status();
  return { blockSize: st.blockSize, used: st.dataBlocks.used, devices: (await svc.devices()) as SnapshotDevice[] };
}
