/**
 * The pool opened in this process as a {@link PoolService}: every operation is its row's
 * `local` in {@link POOL_OPS}, run on this pool.
 */
import { Pool } from '../pool/pool.js';
import { POOL_OPS, type PoolOperations, type PoolService, defineOps } from './pool-service.js';

// The operations' signatures come from the table (defineOps adds the methods below).
export interface LocalPoolService extends PoolOperations {}

export class LocalPoolService implements PoolService {
  constructor(readonly pool: Pool) {}

  /** Opens the pool in `dir` (taking its lock). */
  static async open(dir: string): Promise<LocalPoolService> {
    return new LocalPoolService(await Pool.open(dir));
  }

  get notices(): readonly string[] {
    return this.pool.notices;
  }

  /** Commits and closes the pool. */
  close(): Promise<void> {
    return this.pool.close();
  }
}

defineOps(LocalPoolService.prototype, (self, name, args) => Reflect.apply(POOL_OPS[name].local, undefined, [self.pool, ...args]) as Promise<unknown>);
