/**
 * The file-system work on mounted snapshots, as tasks a worker process runs
 * (`fs-worker.ts`): applying a layer blob to a mounted file system, diffing two mounted trees,
 * writing the layer of a diff, and making a container's volume mount points inside its root.
 *
 * They run in a child process because the daemon serves the very block devices these mounts sit
 * on (loop -> nbdfuse -> the daemon's NBD socket): a write into such a mount can wait on the
 * kernel's writeback, which waits on the daemon's NBD server, which needs libuv's thread pool
 * for its own file I/O; with the pool's few threads all blocked in writes into the mount, the
 * daemon would stall. A separate process has its own thread pool, so the daemon always serves.
 */
import { createReadStream } from 'node:fs';
import type { ApplySummary } from './apply-summary.js';
import type { Digest } from './digest.js';
import { openUncompressed } from './decompress.js';
import { applyLayer } from './layer-apply.js';
import { type WrittenLayer, writeLayer } from './layer-writer.js';
import { ScopedRoot, entryComponents } from './scoped-root.js';
import { type ChangeKind, diffTrees } from './tree-diff.js';
import { UsageError, ThinpoolError } from '../errors.js';

/** One task for the worker. Paths are absolute. */
export type FsTask =
  /** Applies the layer blob `blob` (a file; gzip, zstd or plain) to `root`, checking its diff id. */
  | { op: 'apply'; root: string; blob: string; diffId: Digest; layer: string }
  /** The changes from `lower` to `upper`, as `docker diff` lists them. */
  | { op: 'diff'; lower: string; upper: string }
  /** The layer (gzip tar) of the changes from `lower` to `upper`, written to `out`. */
  | { op: 'writeLayer'; lower: string; upper: string; out: string }
  /** Makes the directories `paths` (absolute inside the root) in `root`, confined to it; returns their real paths. */
  | { op: 'volumeTargets'; root: string; paths: string[] };

/** A change as `container diff` prints it. */
export interface ChangeLine {
  kind: ChangeKind;
  path: string;
}

/** What each task resolves to. */
export interface FsTaskResults {
  apply: ApplySummary;
  diff: ChangeLine[];
  writeLayer: WrittenLayer & { changes: ChangeLine[] };
  volumeTargets: string[];
}

/** Runs a task in this process (the worker calls this; tests may too). */
export async function runFsTask<T extends FsTask>(task: T, signal?: AbortSignal): Promise<FsTaskResults[T['op']]> {
  type R = FsTaskResults[T['op']];
  switch (task.op) {
    case 'apply': {
      const tar = openUncompressed(createReadStream(task.blob, { highWaterMark: 256 * 1024 }), { name: task.layer, diffId: task.diffId });
      // applyLayer says "of layer X": X without a leading "layer ".
      return (await applyLayer(task.root, tar, { layer: task.layer.replace(/^layer /, ''), ...(signal ? { signal } : {}) })) as R;
    }
    case 'diff': {
      const d = await diffTrees(task.lower, task.upper);
      return d.changes.map((c) => ({ kind: c.kind, path: c.path })) as R;
    }
    case 'writeLayer': {
      const d = await diffTrees(task.lower, task.upper);
      const w = await writeLayer(d, task.out);
      return { ...w, changes: d.changes.map((c) => ({ kind: c.kind, path: c.path })) } as R;
    }
    case 'volumeTargets': {
      const scoped = new ScopedRoot(task.root);
      const out: string[] = [];
      for (const p of task.paths) {
        try {
          const comps = entryComponents(p.replace(/^\/+/, ''), p, 'volume path');
          if (!comps.length) throw new UsageError(`Cannot mount a volume at ${p}: that is the container's root`);
          out.push((await scoped.resolveDir(comps, p, true))!.real);
        } catch (err) {
          if (err instanceof ThinpoolError && !(err instanceof UsageError)) {
            throw new UsageError(`Cannot mount a volume at ${p} in the container: ${err.message.replace(/^Cannot [^:]*: /, '')}`, { path: p });
          }
          throw err;
        }
      }
      return out as R;
    }
  }
}
