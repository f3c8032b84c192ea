/**
 * containerd's `containerd.services.snapshots.v1.Snapshots` gRPC service over a
 * {@link Snapshotter}: what a containerd proxy plugin (`[proxy_plugins.NAME] type = "snapshot"`)
 * calls. Errors carry the status codes containerd's `errdefs.FromGRPC` turns back into its
 * error classes: NotFound, AlreadyExists, FailedPrecondition, InvalidArgument; a pool that
 * cannot take changes (read-only, stopping) is Unavailable; out of space ResourceExhausted.
 */
import * as grpc from '@grpc/grpc-js';
import { BusyError, ExistsError, NoSpaceError, NotFoundError, PreconditionError, ReadOnlyError, ThinpoolError, UsageError } from '../../errors.js';
import { formatNs, parseNs } from '../../snapshots/clock.js';
import type { Snapshotter } from '../../snapshots/snapshotter.js';
import type { Mount as SnapMount, SnapshotInfo } from '../../snapshots/types.js';
import type { Info, Kind, Mount, SnapshotsHandlers, Timestamp } from './snapshots-api.js';

/** The gRPC status code for an error, as containerd's errdefs expects it. */
export function grpcCodeOf(err: unknown): grpc.status {
  if (err instanceof NotFoundError) return grpc.status.NOT_FOUND;
  if (err instanceof ExistsError) return grpc.status.ALREADY_EXISTS;
  if (err instanceof PreconditionError || (err instanceof BusyError && err.code === 'EBUSY')) return grpc.status.FAILED_PRECONDITION;
  if (err instanceof UsageError || err instanceof RangeError) return grpc.status.INVALID_ARGUMENT;
  if (err instanceof ReadOnlyError || err instanceof BusyError) return grpc.status.UNAVAILABLE;
  if (err instanceof NoSpaceError) return grpc.status.RESOURCE_EXHAUSTED;
  return grpc.status.UNKNOWN;
}

function toStatus(err: unknown): Partial<grpc.StatusObject> {
  const message = err instanceof ThinpoolError || err instanceof Error ? err.message : String(err);
  return { code: grpcCodeOf(err), details: message };
}

function timestamp(s: string): Timestamp {
  const ns = parseNs(s);
  return { seconds: Number(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) };
}

/** A Timestamp back to the record's string form. */
export function timestampString(t: Timestamp | null | undefined): string {
  if (!t) return formatNs(0n);
  return formatNs(BigInt(t.seconds) * 1_000_000_000n + BigInt(t.nanos));
}

const KINDS: Record<SnapshotInfo['kind'], Kind> = { active: 'ACTIVE', view: 'VIEW', committed: 'COMMITTED' };

function toInfo(i: SnapshotInfo): Info {
  return { name: i.name, parent: i.parent, kind: KINDS[i.kind], createdAt: timestamp(i.created), updatedAt: timestamp(i.updated), labels: i.labels };
}

function toMounts(ms: SnapMount[]): Mount[] {
  return ms.map((m) => ({ type: m.type, source: m.source, target: '', options: m.options }));
}

/** Runs a unary handler body, answering its result or its error's status. */
function unary<Req, Res>(fn: (req: Req) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (res) => callback(null, res),
        (err) => callback(toStatus(err)),
      );
  };
}

/** How many infos one List response carries. */
const LIST_BATCH = 100;

/** The handlers of the Snapshots service for `server.addService(api.service, handlers)`. */
export function snapshotsHandlers(s: Snapshotter, log: (msg: string) => void = () => undefined): SnapshotsHandlers {
  const logged = <Req, Res>(name: string, fn: (req: Req) => Promise<Res> | Res) =>
    unary<Req, Res>(async (req) => {
      try {
        return await fn(req);
      } catch (err) {
        const code = grpcCodeOf(err);
        if (code === grpc.status.UNKNOWN || code === grpc.status.RESOURCE_EXHAUSTED || code === grpc.status.UNAVAILABLE) log(`${name}: ${(err as Error).message}`);
        throw err;
      }
    });
  return {
    Prepare: logged('Prepare', async (req) => ({ mounts: toMounts(await s.prepare(req.key, req.parent, req.labels)) })),
    View: logged('View', async (req) => ({ mounts: toMounts(await s.view(req.key, req.parent, req.labels)) })),
    Mounts: logged('Mounts', async (req) => ({ mounts: toMounts(await s.mounts(req.key)) })),
    Commit: logged('Commit', async (req) => {
      await s.commit(req.name, req.key, req.labels);
      return {};
    }),
    Remove: logged('Remove', async (req) => {
      await s.remove(req.key);
      return {};
    }),
    Stat: logged('Stat', (req) => ({ info: toInfo(s.stat(req.key)) })),
    Update: logged('Update', async (req) => {
      if (!req.info) throw new UsageError('Cannot update a snapshot: the request names none');
      return { info: toInfo(await s.update({ name: req.info.name, labels: req.info.labels }, req.updateMask?.paths ?? [])) };
    }),
    List: (call) => {
      try {
        const infos = s.list(call.request.filters ?? []).map(toInfo);
        for (let i = 0; i < infos.length; i += LIST_BATCH) call.write({ info: infos.slice(i, i + LIST_BATCH) });
        call.end();
      } catch (err) {
        // A server stream ends with an error status through its 'error' event (grpc-js).
        call.emit('error', Object.assign(new Error((err as Error).message), toStatus(err)));
      }
    },
    Usage: logged('Usage', async (req) => {
      const u = await s.usage(req.key);
      return { size: u.size, inodes: u.inodes };
    }),
    Cleanup: logged('Cleanup', async () => {
      await s.cleanup();
      return {};
    }),
  };
}
