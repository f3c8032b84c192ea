/** Starts an NbdServer on a unix socket in a temp dir over given exports, for tests. */
import { join } from 'node:path';
import type { BufferPool } from '../../src/io/buffer-pool.js';
import type { NbdExport } from '../../src/nbd/export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { StaticExportProvider } from '../../src/nbd/static-export-provider.js';
import { NbdClient, dialUnix, type ConnectOptions } from './nbd-client.js';
import { tempDir } from './tmp.js';

export interface NbdHarness {
  server: NbdServer;
  provider: StaticExportProvider;
  dir: string;
  sock: string;
  /** Every line the server logged. */
  logs: string[];
  /** `nbd+unix:///name?socket=...` */
  uri(name?: string): string;
  /** A negotiated client on the unix socket. */
  client(opts?: ConnectOptions): Promise<NbdClient>;
  close(): Promise<void>;
}

export interface HarnessOptions {
  defaultExport?: string;
  maxPayload?: number;
  closeGraceMs?: number;
  shutdownTimeoutMs?: number;
  maxBufferedBytes?: number;
  payloadStallMs?: number;
  buffers?: BufferPool;
}

export async function startNbd(exports: NbdExport[], opts: HarnessOptions = {}): Promise<NbdHarness> {
  const dir = tempDir('thinpool-nbd-');
  const sock = join(dir, 'nbd.sock');
  const provider = new StaticExportProvider(exports, opts.defaultExport === undefined ? {} : { defaultExport: opts.defaultExport });
  const logs: string[] = [];
  const server = new NbdServer({
    provider,
    log: (m) => logs.push(m),
    ...(opts.maxPayload === undefined ? {} : { maxPayload: opts.maxPayload }),
    ...(opts.closeGraceMs === undefined ? {} : { closeGraceMs: opts.closeGraceMs }),
    ...(opts.shutdownTimeoutMs === undefined ? {} : { shutdownTimeoutMs: opts.shutdownTimeoutMs }),
    ...(opts.maxBufferedBytes === undefined ? {} : { maxBufferedBytes: opts.maxBufferedBytes }),
    ...(opts.payloadStallMs === undefined ? {} : { payloadStallMs: opts.payloadStallMs }),
    ...(opts.buffers === undefined ? {} : { buffers: opts.buffers }),
  });
  await server.listenUnix(sock);
  return {
    server,
    provider,
    dir,
    sock,
    logs,
    uri: (name = '') => `nbd+unix:///${encodeURIComponent(name)}?socket=${sock}`,
    client: async (o = {}) => NbdClient.connect(await dialUnix(sock), o),
    close: () => server.close(),
  };
}

/** Polls `cond` every 10 ms until it holds; rejects after `ms`. */
export async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
