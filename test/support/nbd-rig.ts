/**
 * An in-memory NBD server for one-connection protocol tests: a 16 MiB read-write export `disk`
 * and a 1 MiB read-only `ro` (plus any given), connections over duplex pairs, the server's log.
 */
import type { Duplex } from 'node:stream';
import type { NbdExport } from '../../src/nbd/export.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { StaticExportProvider } from '../../src/nbd/static-export-provider.js';
import { NbdClient, withTimeout, type ConnectOptions } from './nbd-client.js';
import { duplexPair } from './nbd-duplex.js';

export const MiB = 1024 * 1024;

export interface Rig {
  server: NbdServer;
  logs: string[];
  disk: MemoryExport;
  ro: MemoryExport;
  provider: StaticExportProvider;
  stream(): Duplex;
  connect(opts?: ConnectOptions): Promise<NbdClient>;
  open(): Promise<NbdClient>;
}

/** A server with the two exports (and `extra`), and ways to connect to it. */
export function rig(extra: NbdExport[] = [], opts: { defaultExport?: string; maxPayload?: number; handshakeTimeoutMs?: number } = {}): Rig {
  const disk = new MemoryExport({ name: 'disk', size: 16 * MiB, description: 'a test disk' });
  const ro = new MemoryExport({ name: 'ro', size: MiB, readOnly: true });
  const provider = new StaticExportProvider([disk, ro, ...extra], opts.defaultExport === undefined ? {} : { defaultExport: opts.defaultExport });
  const logs: string[] = [];
  const server = new NbdServer({ provider, log: (m) => logs.push(m), closeGraceMs: 200, handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 0, ...(opts.maxPayload ? { maxPayload: opts.maxPayload } : {}) });
  const stream = () => {
    const [a, b] = duplexPair();
    server.serve(b);
    return a;
  };
  return {
    server,
    logs,
    disk,
    ro,
    provider,
    stream,
    connect: (o = {}) => NbdClient.connect(stream(), { exportName: 'disk', ...o }),
    open: async () => {
      const c = await NbdClient.open(stream());
      c.sendClientFlags(3);
      return c;
    },
  };
}

/** Resolves when the server closes `c`, failing after 2 s. */
export const closedSoon = (c: NbdClient, what = 'server closes the connection') => withTimeout(c.closed, 2000, what);
/** The type of the last reply. */
export const lastType = (r: { type: number }[]) => r[r.length - 1]!.type;
