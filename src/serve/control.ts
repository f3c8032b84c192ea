/**
 * The control socket (`POOL/control.sock`) through which commands reach a pool that a
 * `thinpool serve` daemon owns: {@link ControlServer} answers one request at a time per
 * connection by running the named operation of {@link POOL_OPS} on the daemon's service. The
 * wire format is in control-wire.ts; the client is `RemotePoolService`. The socket is created
 * mode 0600 in the pool directory.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { UsageError } from '../errors.js';
import { type SocketFile, listenUnixSocket, removeSocketFile } from '../nbd/unix-socket.js';
import { type Message, MessageReader, frame, serializeError } from './control-wire.js';
import { type PoolService, isOpName, runOp } from './pool-service.js';

/** Serves a {@link PoolService} on a unix socket. */
export class ControlServer {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private file: SocketFile | undefined;

  constructor(private readonly service: PoolService) {}

  /** Listens on `path` (mode 0600); a stale socket there is replaced, anything else refused (see `listenUnixSocket`). */
  async listen(path: string): Promise<void> {
    const server = createServer((s) => this.accept(s));
    this.file = await listenUnixSocket(server, path, 0o600);
    this.server = server;
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
      if (!isOpName(op)) throw new UsageError(`Cannot run control operation '${op}': unknown`);
      const args: unknown[] = Array.isArray(m.args) ? [...m.args] : [];
      if (payload !== undefined) args.push(payload);
      const result = await runOp(this.service, op, args);
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
    if (this.file) await removeSocketFile(this.file);
  }
}
