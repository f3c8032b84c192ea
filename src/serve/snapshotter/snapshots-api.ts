/**
 * containerd's snapshots gRPC API (`containerd.services.snapshots.v1.Snapshots`, containerd 1.6):
 * the service definition loaded from the project's `proto/` directory with `@grpc/proto-loader`,
 * and TypeScript shapes of its messages as the loader's options below decode them.
 *
 * The .proto files ship with the package (`proto/containerd/services/snapshots/v1/snapshots.proto`,
 * `proto/containerd/types/mount.proto`); the google.protobuf well-known types (Empty, FieldMask,
 * Timestamp) come bundled with protobufjs. The directory is found by walking up from this module
 * to the package root, so the same code works from `dist/` and from an installed package.
 *
 * @example
 * const api = loadSnapshotsApi();
 * server.addService(api.service, handlers);                 // a grpc-js Server
 * const client = createSnapshotsClient('/run/thinpool/snapshotter.sock');
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { NotFoundError } from '../../errors.js';

/** Fully qualified name of the service, as containerd dials it. */
export const SNAPSHOTS_SERVICE = 'containerd.services.snapshots.v1.Snapshots';
/** The service's .proto file, relative to the proto directory. */
export const SNAPSHOTS_PROTO = 'containerd/services/snapshots/v1/snapshots.proto';

/**
 * How messages are decoded: field names in lowerCamelCase (`createdAt`, `updateMask`), int64 as
 * JavaScript numbers (exact below 2^53: 8 PiB), enums as their names (`'ACTIVE'`), absent fields
 * as their defaults (`''`, `[]`, `{}`), so a request without a parent reads `parent: ''`.
 * Encoding accepts the same shapes (int64 also as strings).
 */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** Finds `proto/` in the package root above `from` (a directory). */
export function findProtoDir(from: string = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(dir, 'package.json')) && existsSync(join(candidate, SNAPSHOTS_PROTO))) return candidate;
    if (dirname(dir) === dir) break;
  }
  throw new NotFoundError(`Cannot load the containerd snapshots API: no proto/${SNAPSHOTS_PROTO} in a package root above ${from}`, { from });
}

/** The loaded API. */
export interface SnapshotsApi {
  /** Directory the .proto files were read from. */
  protoDir: string;
  /** Every message and service of the files (proto-loader's package definition). */
  definition: protoLoader.PackageDefinition;
  /** The service definition for `grpc.Server#addService`. */
  service: grpc.ServiceDefinition;
  /** Client constructor: `new Client('unix:/path.sock', grpc.credentials.createInsecure())`. */
  Client: grpc.ServiceClientConstructor;
}

let cached: SnapshotsApi | undefined;

/** Loads (once per process) the snapshots service from the package's proto directory. */
export function loadSnapshotsApi(): SnapshotsApi {
  if (cached) return cached;
  const protoDir = findProtoDir();
  const definition = protoLoader.loadSync(SNAPSHOTS_PROTO, { ...PROTO_LOADER_OPTIONS, includeDirs: [protoDir] });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
  };
  const Client = loaded.containerd.services.snapshots.v1.Snapshots;
  cached = { protoDir, definition, service: Client.service, Client };
  return cached;
}

/** `containerd.types.Mount`: what the caller passes to mount(2) (`mount -t type -o options source target`). */
export interface Mount {
  type: string;
  source: string;
  /** Unused by containerd 1.6's snapshotters (the caller chooses the target). */
  target: string;
  options: string[];
}

/** Snapshot kind; `UNKNOWN` is never a valid answer. */
export type Kind = 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';

/** `google.protobuf.Timestamp` as decoded (`seconds` since the epoch, `nanos` 0..999999999). */
export interface Timestamp {
  seconds: number;
  nanos: number;
}

/** A snapshot's record. */
export interface Info {
  /** Key of an active snapshot or view, name of a committed one. */
  name: string;
  /** Name of the committed parent, `''` for none. */
  parent: string;
  kind: Kind;
  createdAt: Timestamp | null;
  updatedAt: Timestamp | null;
  labels: Record<string, string>;
}

/** Every request carries `snapshotter`: containerd sends the proxy plugin's name. */
export interface SnapshotterRequest {
  snapshotter: string;
}
export interface PrepareSnapshotRequest extends SnapshotterRequest {
  key: string;
  parent: string;
  labels: Record<string, string>;
}
/** Same fields as Prepare; the result is read-only. */
export type ViewSnapshotRequest = PrepareSnapshotRequest;
export interface MountsRequest extends SnapshotterRequest {
  key: string;
}
export interface MountsResponse {
  mounts: Mount[];
}
export type PrepareSnapshotResponse = MountsResponse;
export type ViewSnapshotResponse = MountsResponse;
export interface RemoveSnapshotRequest extends SnapshotterRequest {
  key: string;
}
export interface CommitSnapshotRequest extends SnapshotterRequest {
  name: string;
  key: string;
  labels: Record<string, string>;
}
export interface StatSnapshotRequest extends SnapshotterRequest {
  key: string;
}
export interface StatSnapshotResponse {
  info: Info | null;
}
/** `updateMask.paths`: `labels` (replace all) or `labels.KEY` (one label); null or empty = every mutable field. */
export interface UpdateSnapshotRequest extends SnapshotterRequest {
  info: Info | null;
  updateMask: { paths: string[] } | null;
}
export type UpdateSnapshotResponse = StatSnapshotResponse;
export interface ListSnapshotsRequest extends SnapshotterRequest {
  /** containerd filter expressions; a snapshot matching any of them is listed, all when empty. */
  filters: string[];
}
export interface ListSnapshotsResponse {
  info: Info[];
}
export interface UsageRequest extends SnapshotterRequest {
  key: string;
}
export interface UsageResponse {
  size: number;
  inodes: number;
}
export type CleanupRequest = SnapshotterRequest;
/** `google.protobuf.Empty`. */
export type Empty = Record<string, never>;

type Unary<Req, Res> = grpc.handleUnaryCall<Req, Res>;

/** What a server implements: pass an object of this type to `server.addService(api.service, impl)`. */
export interface SnapshotsHandlers extends grpc.UntypedServiceImplementation {
  Prepare: Unary<PrepareSnapshotRequest, PrepareSnapshotResponse>;
  View: Unary<ViewSnapshotRequest, ViewSnapshotResponse>;
  Mounts: Unary<MountsRequest, MountsResponse>;
  Commit: Unary<CommitSnapshotRequest, Empty>;
  Remove: Unary<RemoveSnapshotRequest, Empty>;
  Stat: Unary<StatSnapshotRequest, StatSnapshotResponse>;
  Update: Unary<UpdateSnapshotRequest, UpdateSnapshotResponse>;
  /** Server streaming: write `ListSnapshotsResponse` batches, then `end()`. */
  List: grpc.handleServerStreamingCall<ListSnapshotsRequest, ListSnapshotsResponse>;
  Usage: Unary<UsageRequest, UsageResponse>;
  Cleanup: Unary<CleanupRequest, Empty>;
}

type ClientUnary<Req, Res> = (req: Partial<Req>, callback: (err: grpc.ServiceError | null, res?: Res) => void) => grpc.ClientUnaryCall;

/** A client of the service (`new api.Client(...)` typed); request fields left out take their defaults. */
export interface SnapshotsClient extends grpc.Client {
  Prepare: ClientUnary<PrepareSnapshotRequest, PrepareSnapshotResponse>;
  View: ClientUnary<ViewSnapshotRequest, ViewSnapshotResponse>;
  Mounts: ClientUnary<MountsRequest, MountsResponse>;
  Commit: ClientUnary<CommitSnapshotRequest, Empty>;
  Remove: ClientUnary<RemoveSnapshotRequest, Empty>;
  Stat: ClientUnary<StatSnapshotRequest, StatSnapshotResponse>;
  Update: ClientUnary<UpdateSnapshotRequest, UpdateSnapshotResponse>;
  List: (req: Partial<ListSnapshotsRequest>) => grpc.ClientReadableStream<ListSnapshotsResponse>;
  Usage: ClientUnary<UsageRequest, UsageResponse>;
  Cleanup: ClientUnary<CleanupRequest, Empty>;
}

/** A client of the service on a unix socket (no TLS: unix sockets only). Close it with `client.close()`. */
export function createSnapshotsClient(socketPath: string): SnapshotsClient {
  const { Client } = loadSnapshotsApi();
  return new Client(`unix:${socketPath}`, grpc.credentials.createInsecure()) as unknown as SnapshotsClient;
}
