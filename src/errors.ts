/**
 * Error classes with stable codes. Messages read `Cannot <action>: <observed>[, expected <expected>]`;
 * the CLI prints them as `thinpool: cannot ...` on one line and maps `exitCode` to its exit status.
 *
 * Inside the library "no space" is a result the caller handles (an allocator returns `undefined`);
 * at the public I/O edge it becomes a {@link NoSpaceError}. Corruption is always an error.
 */

/** CLI exit codes (see the README): 0 ok, 1 damage found by check, 2 usage, 3 not found, 4 no space, 5 locked/busy, 6 metadata damaged or needs_check, 7 I/O error, 130 interrupted. */
export const ExitCode = {
  ok: 0,
  damage: 1,
  usage: 2,
  notFound: 3,
  noSpace: 4,
  busy: 5,
  metadata: 6,
  io: 7,
  interrupted: 130,
} as const;

export type ErrorCode =
  | 'EUSAGE'
  | 'ENOTFOUND'
  | 'EEXIST'
  | 'ENOSPC'
  | 'EBUSY'
  | 'ELOCKED'
  | 'ECORRUPT'
  | 'ENEEDSCHECK'
  | 'EREADONLY'
  | 'EIO'
  | 'ERANGE'
  | 'ENOTSUP'
  | 'ECANCELED'
  | 'EBADIMAGE'
  | 'EUNSAFE'
  | 'EPRECONDITION';

/** Base of every thinpool error: a stable `code`, an exit code for the CLI and structured data. */
export class ThinpoolError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;
  readonly data: Record<string, unknown>;
  constructor(code: ErrorCode, message: string, exitCode: number, data: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.exitCode = exitCode;
    this.data = data;
    this.name = new.target.name;
  }
}

/** Bad arguments from a caller (CLI flags, sizes, names). */
export class UsageError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('EUSAGE', message, ExitCode.usage, data);
  }
}

/** A named thing (device, export, pool) does not exist. */
export class NotFoundError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('ENOTFOUND', message, ExitCode.notFound, data);
  }
}

/** A thing to create already exists. */
export class ExistsError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('EEXIST', message, ExitCode.usage, data);
  }
}

/** Out of data space (pool or host file system), or metadata space at the public edge. */
export class NoSpaceError extends ThinpoolError {
  readonly errno = 'ENOSPC';
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('ENOSPC', message, ExitCode.noSpace, data);
  }
}

/** The pool is locked by another process, or a resource is busy. */
export class BusyError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}, code: 'EBUSY' | 'ELOCKED' = 'EBUSY') {
    super(code, message, ExitCode.busy, data);
  }
}

/**
 * The thing exists but is in a state that refuses the action (a snapshot with children cannot
 * be removed, a view cannot be committed): containerd's FailedPrecondition.
 */
export class PreconditionError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('EPRECONDITION', message, ExitCode.busy, data);
  }
}

/** On-disk metadata is damaged: a checksum, magic, block number or structure is wrong. */
export class CorruptionError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('ECORRUPT', message, ExitCode.metadata, data);
  }
}

/** The metadata carries NEEDS_CHECK, or the pool turned read-only after a metadata failure. */
export class ReadOnlyError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}, code: 'EREADONLY' | 'ENEEDSCHECK' = 'EREADONLY') {
    super(code, message, ExitCode.metadata, data);
  }
}

/** An argument is outside the range the object allows (offset past the end of a device, bad block size). */
export class RangeErrorWithCode extends RangeError {
  readonly code = 'ERANGE';
  readonly exitCode = ExitCode.usage;
}

/** An I/O error from the host. */
export class IoError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super('EIO', message, ExitCode.io, data, options);
  }
}

/** The operation cannot be done the way it was asked (e.g. a fast zero that would have to write). */
export class UnsupportedError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('ENOTSUP', message, ExitCode.usage, data);
  }
}

/** Stopped on request (SIGINT/SIGTERM during a long copy). */
export class CanceledError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('ECANCELED', message, ExitCode.interrupted, data);
  }
}

/**
 * Image input that cannot be used: a blob whose digest or size differs from its descriptor, a
 * truncated or undecodable layer, a manifest or config that is not what its media type says.
 * `data.blob` names the blob (its digest) when one is at fault.
 */
export class BadImageError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super('EBADIMAGE', message, ExitCode.usage, data, options);
  }
}

/**
 * A layer entry that would reach outside the directory it is applied to (an absolute or
 * climbing path, a hard link to outside, a write through a symlink that leaves the root) or that
 * cannot be applied safely. `data.entry` names the tar entry. Nothing outside the root was written.
 */
export class UnsafeLayerError extends ThinpoolError {
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('EUNSAFE', message, ExitCode.usage, data);
  }
}

/** An error as it crosses a process boundary (the control socket, a worker's reply). */
export interface ErrorJson {
  name: string;
  code?: string;
  message: string;
  exitCode?: number;
  data?: Record<string, unknown>;
}

/** An error as plain JSON: its class name, code, message, exit code and data. */
export function errorToJson(err: unknown): ErrorJson {
  const e = err as Partial<ThinpoolError> & Error;
  return {
    name: e instanceof RangeError ? 'RangeError' : e?.name ?? 'Error',
    ...(typeof e?.code === 'string' ? { code: e.code } : {}),
    message: e?.message ?? String(err),
    ...(typeof e?.exitCode === 'number' ? { exitCode: e.exitCode } : {}),
    ...(e?.data ? { data: e.data } : {}),
  };
}

/** Rebuilds an error of the same class from {@link errorToJson}'s form, so exit codes and `instanceof` hold. */
export function errorFromJson(e: ErrorJson): Error {
  const data = e.data ?? {};
  switch (e.name) {
    case 'RangeError':
      return new RangeError(e.message);
    case 'UsageError':
      return new UsageError(e.message, data);
    case 'NotFoundError':
      return new NotFoundError(e.message, data);
    case 'ExistsError':
      return new ExistsError(e.message, data);
    case 'PreconditionError':
      return new PreconditionError(e.message, data);
    case 'NoSpaceError':
    case 'MetadataSpaceError':
      return new NoSpaceError(e.message, data);
    case 'BusyError':
      return new BusyError(e.message, data, e.code === 'ELOCKED' ? 'ELOCKED' : 'EBUSY');
    case 'CorruptionError':
      return new CorruptionError(e.message, data);
    case 'ReadOnlyError':
      return new ReadOnlyError(e.message, data, e.code === 'ENEEDSCHECK' ? 'ENEEDSCHECK' : 'EREADONLY');
    case 'UnsupportedError':
      return new UnsupportedError(e.message, data);
    case 'CanceledError':
      return new CanceledError(e.message, data);
    case 'BadImageError':
      return new BadImageError(e.message, data);
    case 'UnsafeLayerError':
      return new UnsafeLayerError(e.message, data);
    default:
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return new NoSpaceError(e.message, data);
      return new IoError(e.message, data);
  }
}

/** Maps any error to a CLI exit code. */
export function exitCodeOf(err: unknown): number {
  if (err instanceof ThinpoolError) return err.exitCode;
  if (err instanceof RangeError) return ExitCode.usage;
  const code = (err as { code?: string } | null)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return ExitCode.noSpace;
  if (code === 'ENOENT') return ExitCode.notFound;
  if (code === 'EBUSY' || code === 'ELOCKED') return ExitCode.busy;
  if (typeof code === 'string' && code.startsWith('E')) return ExitCode.io;
  return ExitCode.io;
}
