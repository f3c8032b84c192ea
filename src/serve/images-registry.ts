/**
 * One {@link ImageService} per open pool, so every operation on a pool (from the control socket,
 * from this process, from the rows of `POOL_OPS`) goes through the same mutex and records. A
 * daemon gives its pool's service the mounts ({@link DaemonFsMounter}) when it starts.
 */
import { ImageService } from '../images/image-service.js';
import type { Pool } from '../pool/pool.js';

const services = new WeakMap<Pool, ImageService>();

/** The image service of `pool` (made on first use). */
export function imagesOf(pool: Pool): ImageService {
  let s = services.get(pool);
  if (!s) {
    s = new ImageService(pool);
    services.set(pool, s);
  }
  return s;
}
