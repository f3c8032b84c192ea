/**
 * The control socket (`POOL/control.sock`) through which commands reach a pool that a
 * `thinpool serve` daemon owns.
 *
 * Wire format, both ways: one JSON line, then `payload` raw bytes when the line says so
 * (`write` sends the data, `read` returns it). Requests `{"id":1,"op":"createDevice","args":["web",1073741824]}`;
 * replies `{"id":1,"ok":true,"result":...}` or `{"id":1,"ok":false,"error":{"name":"NotFoundError","code":"ENOTFOUND","message":"...","exitCode":3}}`.
 * One request at a time per connection. The socket is created mode 0600 in the pool directory.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { chmod, unlink } from 'node:fs/promises';
import {
  BusyError, CorruptionError, ExistsError, IoError, NoSpaceError, NotFoundError, PreconditionError, ReadOnlyError, ThinpoolError, UsageError,
} from '../errors.js';
import type { AttachMount, AttachRecord } from './attach/attach-records.js';
import type { CleanupResult } from './pool-service.js';
import type { CheckReport } from '../thin/check.js';
import type { DeltaRange } from '../thin/delta.js';
import type { DumpOptions } from '../thin/dump.js';
import type { DeviceRecord } from '../thin/catalog.js';
import type { DeviceListing } from '../thin/pool.js';
import type { VolumeExtent } from '../thin/thin-volume.js';
import type { PoolService, ServiceStatus } from './pool-service.js';

/** Largest payload one control message carries. */
export const MAX_CONTROL_PAYLOAD = 64 * 1024 * 1024;
const MAX_LINE = 1024 * 1024;

interface Message {
  id: number;
  op?: string;
  args?: unknown[];
  ok?: boolean;
  result?: unknown;
  error?: { name: string; code?: string; message: string; exitCode?: number; data?: Record<string, unknown> };
  payload?: number;
}

function frame(msg: Message, payload?: Uint8Array): Buffer[] {
  const m = payload ? { ...msg, payload: payload.length } : msg;
  const line = Buffer.from(JSON.stringify(m) + '\n');
  return payload ? [line, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)] : [line];
}

/** Splits a byte stream into messages with their payloads. */
class MessageReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private pending: Message | undefined;

  constructor(private readonly onMessage: (m: Message, payload: Buffer | undefined) => void, private readonly onError: (e: Error) => void) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (!this.pending) {
        const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
        this.chunks = [all];
        const nl = all.indexOf(10);
        if (nl < 0) {
          if (all.length > MAX_LINE) this.onError(new UsageError('Cannot read a control message: line too long'));
          return;
        }
        let msg: Message;
        try {
          msg = JSON.parse(all.subarray(0, nl).toString('utf8')) as Message;
        } catch {
          this.onError(new UsageError('Cannot read a control message: not JSON'));
          return;
        }
        this.chunks = [all.subarray(nl + 1)];
        this.buffered = all.length - nl - 1;
        if (msg.payload !== undefined && (!Number.isSafeInteger(msg.payload) || msg.payload < 0 || msg.payload > MAX_CONTROL_PAYLOAD)) {
          this.onError(new UsageError(`Cannot read a control message: payload of ${msg.payload} bytes`));
          return;
        }
        if (!msg.payload) {
          this.onMessage(msg, undefined);
          continue;
        }
        this.pending = msg;
      }
      const need = this.pending.payload!;
      if (this.buffered < need) return;
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      const payload = all.subarray(0, need);
      this.chunks = [all.subarray(need)];
      this.buffered = all.length - need;
      const m = this.pending;
      this.pending = undefined;
      this.onMessage(m, payload);
    }
  }
}

function serializeError(err: unknown): NonNullable<Message['error']> {
  const e = err as Partial<ThinpoolError> & Error;
  return {
    name: e instanceof RangeError ? 'RangeError' : e?.name ?? 'Error',
    ...(typeof e?.code === 'string' ? { code: e.code } : {}),
    message: e?.message ?? String(err),
    ...(typeof e?.exitCode === 'number' ? { exitCode: e.exitCode } : {}),
    ...(e?.data ? { data: e.data } : {}),
  };
}

/** Rebuilds an error of the same class on the client side, so exit codes and `instanceof` hold. */
function deserializeError(e: NonNullable<Message['error']>): Error {
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
    default:
      return new IoError(e.message, data);
  }
}

/** The operations the control socket carries: PoolService's methods. */
const OPS = new Set([
  'status', 'devices', 'device', 'createDevice', 'snapshot', 'remove', 'rename', 'resize', 'geometry', 'read', 'write', 'discard',
  'extents', 'flush', 'extend', 'setTransactionId', 'metadataSnap', 'dumpTo', 'check', 'clearNeedsCheck', 'delta',
  'attach', 'addMount', 'removeMount', 'attachments', 'cleanup',
]);

/** Serves a {@link PoolService} on a unix socket. */
export class ControlServer {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private path: string | undefined;

  constructor(private readonly service: PoolService) {}

  async listen(path: string): Promise<void> {
    await unlink(path).catch(() => undefined);
    const server = createServer((s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    await chmod(path, 0o600);
    this.server = server;
    this.path = path;
  }

  private accept(s: Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => s.destroy());
    let queue = Promise.resolve();
    const reader = new MessageReader(
      (m, payload) => {
        s.pause();
        queue = queue.then(() => this.handle(s, m, payload)).finally(() => s.resume());
      },
      (err) => {
        s.end(frame({ id: 0, ok: false, error: serializeError(err) })[0]);
      },
    );
    s.on('data', (d) => reader.push(d));
  }

  private async handle(s: Socket, m: Message, payload: Buffer | undefined): Promise<void> {
    const op = m.op ?? '';
    let reply: Buffer[];
    try {
      if (!OPS.has(op)) throw new UsageError(`Cannot run control operation '${op}': unknown`);
      const args = Array.isArray(m.args) ? m.args : [];
      const svc = this.service as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
      const result = await svc[op]!(...(op === 'write' ? [...args, payload ?? Buffer.alloc(0)] : args));
      reply = Buffer.isBuffer(result) ? frame({ id: m.id, ok: true }, result) : frame({ id: m.id, ok: true, result: result ?? null });
    } catch (err) {
      reply = frame({ id: m.id, ok: false, error: serializeError(err) });
    }
    if (!s.destroyed) for (const b of reply) s.write(b);
  }

  async close(): Promise<void> {
    const srv = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.end();
    if (srv) await new Promise<void>((resolve) => srv.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    if (this.path) await unlink(this.path).catch(() => undefined);
  }
}

/** A pool owned by a daemon, reached through its control socket. */
export class RemotePoolService implements PoolService {
  private nextId = 1;
  private waiting: { resolve: (v: { msg: Message; payload: Buffer | undefined }) => void; reject: (e: Error) => void } | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private failed: Error | undefined;
  private wrote = false;

  private constructor(private readonly socket: Socket) {
    const reader = new MessageReader(
      (msg, payload) => {
        const w = this.waiting;
        this.waiting = undefined;
        w?.resolve({ msg, payload });
      },
      (err) => this.fail(err),
    );
    socket.on('data', (d) => reader.push(d));
    socket.on('error', (e) => this.fail(new IoError(`Cannot talk to the pool daemon: ${e.message}`)));
    socket.on('close', () => this.fail(new IoError('Cannot talk to the pool daemon: it closed the connection')));
  }

  /** Connects to a daemon's control socket; rejects when nobody listens there. */
  static connect(path: string): Promise<RemotePoolService> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => {
        s.removeAllListeners('error');
        resolve(new RemotePoolService(s));
      });
      s.once('error', reject);
    });
  }

  private fail(e: Error): void {
    this.failed ??= e;
    const w = this.waiting;
    this.waiting = undefined;
    w?.reject(e);
  }

  private call<T>(op: string, args: unknown[], payload?: Uint8Array): Promise<T> {
    const run = async (): Promise<T> => {
      if (this.failed) throw this.failed;
      const id = this.nextId++;
      const answer = new Promise<{ msg: Message; payload: Buffer | undefined }>((resolve, reject) => (this.waiting = { resolve, reject }));
      for (const b of frame({ id, op, args }, payload)) this.socket.write(b);
      const { msg, payload: data } = await answer;
      if (!msg.ok) throw deserializeError(msg.error ?? { name: 'Error', message: 'Cannot run the operation: no reply' });
      return (data ?? msg.result) as T;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  status(): Promise<ServiceStatus> {
    return this.call('status', []);
  }
  devices(): Promise<DeviceListing[]> {
    return this.call('devices', []);
  }
  device(dev: string): Promise<DeviceListing> {
    return this.call('device', [dev]);
  }
  createDevice(name: string, sizeBytes: number): Promise<DeviceRecord> {
    return this.call('createDevice', [name, sizeBytes]);
  }
  snapshot(dev: string, name: string): Promise<DeviceRecord> {
    return this.call('snapshot', [dev, name]);
  }
  remove(dev: string): Promise<void> {
    return this.call('remove', [dev]);
  }
  rename(dev: string, name: string): Promise<void> {
    return this.call('rename', [dev, name]);
  }
  resize(dev: string, sizeBytes: number): Promise<void> {
    return this.call('resize', [dev, sizeBytes]);
  }
  geometry(dev: string): Promise<{ sizeBytes: number; blockSize: number }> {
    return this.call('geometry', [dev]);
  }
  async read(dev: string, offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length);
    for (let done = 0; done < length; ) {
      const n = Math.min(MAX_CONTROL_PAYLOAD, length - done);
      const part = await this.call<Buffer | null>('read', [dev, offset + done, n]);
      if (!part || part.length !== n) throw new IoError(`Cannot read ${dev}: the daemon returned ${part?.length ?? 0} of ${n} bytes`);
      part.copy(out, done);
      done += n;
    }
    return out;
  }
  async write(dev: string, offset: number, data: Uint8Array): Promise<void> {
    this.wrote = true;
    for (let done = 0; done < data.length; ) {
      const n = Math.min(MAX_CONTROL_PAYLOAD, data.length - done);
      await this.call('write', [dev, offset + done], data.subarray(done, done + n));
      done += n;
    }
  }
  discard(dev: string, offset: number, length: number): Promise<void> {
    this.wrote = true;
    return this.call('discard', [dev, offset, length]);
  }
  extents(dev: string, offset: number, length: number): Promise<VolumeExtent[]> {
    return this.call('extents', [dev, offset, length]);
  }
  flush(): Promise<void> {
    return this.call('flush', []);
  }
  extend(opts: { dataSize?: number; metadataSize?: number }): Promise<void> {
    return this.call('extend', [opts]);
  }
  setTransactionId(old: number, next: number): Promise<void> {
    return this.call('setTransactionId', [old, next]);
  }
  metadataSnap(action: 'reserve' | 'release'): Promise<number | null> {
    return this.call('metadataSnap', [action]);
  }
  dumpTo(file: string, opts: DumpOptions): Promise<void> {
    return this.call('dumpTo', [file, opts]);
  }
  check(): Promise<CheckReport> {
    return this.call('check', []);
  }
  clearNeedsCheck(): Promise<CheckReport> {
    return this.call('clearNeedsCheck', []);
  }
  delta(a: string, b: string): Promise<{ left: number; right: number; blockSize: number; ranges: DeltaRange[] }> {
    return this.call('delta', [a, b]);
  }
  // ---- attachments and mounts --------------------------------------------------------------
  attach(dev: string, opts: { readOnly: boolean; holder: string }): Promise<AttachRecord> {
    return this.call('attach', [dev, opts]);
  }
  addMount(dev: string, mount: AttachMount): Promise<void> {
    return this.call('addMount', [dev, mount]);
  }
  removeMount(dev: string, dir: string): Promise<boolean> {
    return this.call('removeMount', [dev, dir]);
  }
  attachments(): Promise<AttachRecord[]> {
    return this.call('attachments', []);
  }
  cleanup(): Promise<CleanupResult> {
    return this.call('cleanup', []);
  }

  /** Commits what this session wrote (the daemon keeps the pool open), then disconnects. */
  async close(): Promise<void> {
    try {
      if (this.wrote && !this.failed) await this.flush();
    } finally {
      this.failed ??= new IoError('Cannot use the pool daemon connection: closed');
      this.socket.end();
    }
  }
}
