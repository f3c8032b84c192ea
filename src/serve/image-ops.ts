/**
 * The rows of `POOL_OPS` for the image and container commands: each runs the pool's
 * {@link imagesOf} service, so the same code runs in a daemon (reached through the control
 * socket, or started by a command for its own duration) and on a pool a command opened itself
 * (where the operations that mount refuse and name `thinpool serve`). Paths are absolute: the
 * daemon reads and writes them itself.
 */
import type { ContainerMount, CreatedContainer, RemoveContainerResult } from '../images/container-service.js';
import type { ChangeLine } from '../images/fs-tasks.js';
import type { ImageResult, RemoveImageResult, SaveResult } from '../images/image-service.js';
import type { Volume } from '../images/image-records.js';
import type { ContainerSummary, HistoryRow, ImageSummary, PruneResult } from '../images/image-store.js';
import type { Pool } from '../pool/pool.js';
import { imagesOf } from './images-registry.js';
import type { PoolOp } from './pool-service.js';

/** A row that runs the same on an open pool and through the control socket (one request each). */
function row<A extends unknown[], R>(local: (pool: Pool, ...args: A) => Promise<R>): PoolOp<A, R> {
  return { local };
}

/** Options of `container create`. */
export interface CreateContainerOptions {
  name?: string;
  volumes?: Volume[];
}

export const IMAGE_OPS = {
  /** `image load FILE|DIR`: an OCI layout (dir, tar) or docker save archive; tags `names` or the archive's. */
  imageLoad: row((p, path: string, opts: { names?: string[]; ref?: string }): Promise<ImageResult> => imagesOf(p).load(path, opts)),
  /** `image import NAME TAR`: a one-layer image from a root file system tar. */
  imageImport: row((p, name: string, path: string): Promise<ImageResult> => imagesOf(p).importTar(name, path)),
  /** `image save NAME OUT`: an OCI layout directory, or a tar when OUT ends in .tar. */
  imageSave: row((p, ref: string, out: string): Promise<SaveResult> => imagesOf(p).save(ref, out)),
  imageList: row((p): Promise<ImageSummary[]> => imagesOf(p).list()),
  imageHistory: row((p, ref: string): Promise<HistoryRow[]> => imagesOf(p).history(ref)),
  imageRemove: row((p, ref: string): Promise<RemoveImageResult> => imagesOf(p).removeImage(ref)),
  imagePrune: row((p): Promise<PruneResult> => imagesOf(p).prune()),
  containerCreate: row((p, image: string, opts: CreateContainerOptions): Promise<CreatedContainer> => imagesOf(p).containers.create(image, opts)),
  containerMount: row((p, ref: string): Promise<ContainerMount> => imagesOf(p).containers.mount(ref)),
  containerUmount: row((p, ref: string): Promise<{ id: string; unmounted: string[] }> => imagesOf(p).containers.umount(ref)),
  containerDiff: row((p, ref: string): Promise<ChangeLine[]> => imagesOf(p).containers.diff(ref)),
  containerCommit: row((p, ref: string, name: string, opts: { comment?: string }): Promise<ImageResult> => imagesOf(p).containers.commit(ref, name, opts)),
  containerRemove: row((p, ref: string): Promise<RemoveContainerResult> => imagesOf(p).containers.remove(ref)),
  containerList: row((p): Promise<ContainerSummary[]> => imagesOf(p).containers.list()),
};
