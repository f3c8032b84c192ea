/**
 * Maps an error thrown by an {@link NbdExport} to the NBD error value sent to the client, following
 * the contract in `export.ts`: ENOSPC (also EDQUOT, EFBIG) -> ENOSPC, RangeError -> EINVAL,
 * EROFS / EPERM / EREADONLY / ENEEDSCHECK (a pool that turned read-only) -> EPERM, ENOTSUP / EOPNOTSUPP -> ENOTSUP, anything else -> EIO.
 */
import { NbdErr } from './protocol.js';

/** @example nbdErrorOf(Object.assign(new Error('full'), { code: 'ENOSPC' })) === NbdErr.ENOSPC */
export function nbdErrorOf(err: unknown): number {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NbdErr.ENOSPC;
    case 'EROFS':
    case 'EPERM':
    case 'EREADONLY':
    case 'ENEEDSCHECK':
      return NbdErr.EPERM;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return NbdErr.ENOTSUP;
  }
  if (err instanceof RangeError) return NbdErr.EINVAL;
  return NbdErr.EIO;
}
