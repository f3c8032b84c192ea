/**
 * How a command reaches a pool: through the daemon that owns it when `thinpool serve` runs
 * (its control socket answers), else by opening the pool in this process.
 */
import { LocalPoolService, type PoolService } from './pool-service.js';

export async function connectPool(dir: string): Promise<PoolService> {
  return LocalPoolService.open(dir);
}
