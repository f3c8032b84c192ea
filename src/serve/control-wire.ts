/**
 * The control socket's wire format (`POOL/control.sock`), both ways: one JSON line, then
 * `payload` raw bytes when the line says so (a request's payload is its operation's last
 * argument, e.g. `write`'s data; a reply's payload is its result, e.g. `read`'s bytes).
 * Requests `{"id":1,"op":"createDevice","args":["web",1073741824]}`; replies
 * `{"id":1,"ok":true,"result":...}` or
 * `{"id":1,"ok":false,"error":{"name":"NotFoundError","code":"ENOTFOUND","message":"...","exitCode":3}}`.
 * Errors cross as their class, code and data, so exit codes and `instanceof` hold on the client.
 */
import { UsageError, errorFromJson, errorToJson } from '../errors.js';

/** Largest payload one control message carries. */
export const MAX_CONTROL_PAYLOAD = 64 * 1024 * 1024;
const MAX_LINE = 1024 * 1024;

export interface Message {
  id: number;
  op?: string;
  args?: unknown[];
  ok?: boolean;
  result?: unknown;
  error?: { name: string; code?: string; message: string; exitCode?: number; data?: Record<string, unknown> };
  payload?: number;
}

export function frame(msg: Message, payload?: Uint8Array): Buffer[] {
  const m = payload ? { ...msg, payload: payload.length } : msg;
  const line = Buffer.from(JSON.stringify(m) + '\n');
  return payload ? [line, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)] : [line];
}

/** Splits a byte stream into messages with their payloads. */
export class MessageReader {
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
        if (msg.payload === undefined) {
          this.onMessage(msg, undefined);
          continue;
        }
        if (msg.payload === 0) {
          this.onMessage(msg, Buffer.alloc(0));
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

/** Errors cross the socket as {@link errorToJson} writes them (src/errors.ts). */
export { errorToJson as serializeError, errorFromJson as deserializeError };
