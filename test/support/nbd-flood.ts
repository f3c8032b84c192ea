/**
 * A flood of partial NBD WRITEs, for the memory-bound test and its measurement: `connections`
 * clients each negotiate, send one WRITE header of `payload` bytes and then only `sent` bytes of
 * its payload, and hold the connection open. The server must keep what it buffers for them
 * bounded (per connection and in total) instead of growing with every byte received.
 *
 * Run as a script to measure a daemon's RSS under the flood (the figure in the README):
 *   node dist/test/support/nbd-flood.js [connections=150] [sentMiB=16] [payloadMiB=32]
 * starts `thinpool serve` on a fresh pool, floods it, and prints the RSS before, at its peak and
 * after the flood as JSON.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Cmd, packRequestHeader } from '../../src/nbd/protocol.js';
import { makePool, startDaemon } from './daemon.js';
import { NbdClient, dialUnix } from './nbd-client.js';

const MiB = 1024 * 1024;

/** Resident set size of process `pid` in bytes (VmRSS), or its peak (VmHWM). */
export function rssOf(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

export interface Flood {
  clients: NbdClient[];
  /** Bytes of payload the clients handed to their sockets. */
  sent: number;
  close(): void;
}

/** Opens `connections` clients on `socket` that each send a WRITE header of `payload` bytes and `sent` bytes of it. */
export async function flood(socket: string, exportName: string, connections: number, payload = 32 * MiB, sent = 16 * MiB): Promise<Flood> {
  const clients: NbdClient[] = [];
  const chunk = Buffer.alloc(MiB, 0x5a);
  for (let i = 0; i < connections; i++) {
    const c = await NbdClient.connect(await dialUnix(socket), { exportName });
    c.stream.on('error', () => undefined);
    clients.push(c);
    c.sendRaw(packRequestHeader(Cmd.WRITE, 0, 0, i + 1, 0, payload));
    for (let n = 0; n < sent; n += chunk.length) c.sendRaw(chunk.subarray(0, Math.min(chunk.length, sent - n)));
  }
  return {
    clients,
    sent: connections * sent,
    close: () => {
      for (const c of clients) c.destroy();
    },
  };
}

/** Polls `pid`'s RSS until it has not grown by more than 1 MiB for `quietMs`; returns the highest seen. */
export async function settledRss(pid: number, quietMs = 2000, maxMs = 60_000): Promise<number> {
  const t0 = Date.now();
  let best = rssOf(pid);
  let since = Date.now();
  while (Date.now() - t0 < maxMs) {
    await new Promise((r) => setTimeout(r, 200));
    const now = rssOf(pid);
    if (now > best + MiB) {
      best = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) {
      break;
    }
  }
  return Math.max(best, rssOf(pid));
}

async function main(): Promise<void> {
  const connections = Number(process.argv[2] ?? 150);
  const sent = Number(process.argv[3] ?? 16) * MiB;
  const payload = Number(process.argv[4] ?? 32) * MiB;
  const dir = await makePool({ dataSize: 8 * 1024 * MiB, devices: [{ name: 'a', size: 1024 * MiB }] });
  const d = await startDaemon({ dir, via: 'cli' });
  try {
    await new Promise((r) => setTimeout(r, 1000));
    const before = rssOf(d.pid);
    const f = await flood(d.sock, 'a', connections, payload, sent);
    const during = await settledRss(d.pid);
    f.close();
    await new Promise((r) => setTimeout(r, 2000));
    const after = rssOf(d.pid);
    const out = { connections, sentMiBEach: sent / MiB, payloadMiB: payload / MiB, rssBeforeMB: Math.round(before / 1e6), rssFloodMB: Math.round(during / 1e6), rssGrowthMB: Math.round((during - before) / 1e6), rssAfterMB: Math.round(after / 1e6), peakMB: Math.round(rssOf(d.pid, 'VmHWM') / 1e6) };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await d.stop();
  }
}

if (process.argv[1] && pathToFileURL(resolve(process.argv[1])).href === import.meta.url) {
  await main();
  process.exit(0);
}
