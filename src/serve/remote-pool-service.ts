/**
 * A pool owned by a `thinpool serve` daemon, as a {@link PoolService}: every operation of
 * {@link POOL_OPS} is one request over the daemon's control socket (or its row's `remote`, for
 * payloads larger than one message carries).
 */
import { connect, type Socket } from 'node:net';
import { IoError } from '../errors.js';
import { type Message, MessageReader, deserializeError, frame } from './control-wire.js';
import { type OpName, POOL_OPS, type PoolOperations, type PoolService, defineOps } from './pool-service.js';

// The operations' signatures come from the table (defineOps adds the methods below).
export interface RemotePoolService extends PoolOperations {}

export class RemotePoolService implements PoolService {
  private nextId = 1;
  private waiting: { resolve: (v: { msg: Message; payload: Buffer | undefined }) => void; reject: (e: Error) => void } | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private failed: Error | undefined;
  private wrote = false;

  static {
    defineOps(RemotePoolService.prototype, (self, name, args) => self.run(name, args));
  }

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

  /** Runs operation `name`: its row's `remote` when it has one, else one request. */
  private run(name: OpName, args: unknown[]): Promise<unknown> {
    const spec = POOL_OPS[name];
    if (spec.dirties) this.wrote = true;
    if (spec.remote) return Reflect.apply(spec.remote, undefined, [this.callOne, ...args]) as Promise<unknown>;
    return this.call(name, args);
  }

  private readonly callOne = (op: OpName, args: unknown[]) => this.call(op, args);

  /** One request: the arguments, a trailing Uint8Array as the payload; resolves with the result or the reply's payload. */
  private call(op: OpName, args: unknown[]): Promise<unknown> {
    const last = args[args.length - 1];
    const payload = last instanceof Uint8Array ? last : undefined;
    if (payload) args = args.slice(0, -1);
    const run = async (): Promise<unknown> => {
      if (this.failed) throw this.failed;
      const id = this.nextId++;
      const answer = new Promise<{ msg: Message; payload: Buffer | undefined }>((resolve, reject) => (this.waiting = { resolve, reject }));
      for (const b of frame({ id, op, args }, payload)) this.socket.write(b);
      const { msg, payload: data } = await answer;
      if (!msg.ok) throw deserializeError(msg.error ?? { name: 'Error', message: 'Cannot run the operation: no reply' });
      return data ?? msg.result;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
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
