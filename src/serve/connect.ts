/**
 * How a command reaches a pool: through the daemon that owns it when `thinpool serve` runs
 * (its control socket answers), else by opening the pool in this process.
 */
import { join } from 'node:path';
import { RemotePoolService } from './control.js';
import { LocalPoolService, type PoolService } from './pool-service.js';

export async function connectPool(dir: string): Promise<PoolService> {
  try {
    return await RemotePoolService.connect(join(dir, 'control.sock'));
  } catch {
    // No daemon (or a stale socket from one that died): open the pool here.
    return LocalPoolService.open(dir);
  }
}

/** True when a daemon answers on the pool's control socket. */
export async function isServed(dir: string): Promise<boolean> {
  try {
    const r = await RemotePoolService.connect(join(dir, 'control.sock'));
    await r.close();
    return true;
  } catch {
    return false;
  }
}
