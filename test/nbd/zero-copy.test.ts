/**
 * Zero-copy READ replies (zero-copy-send.ts): an export that can hand out file runs has its large
 * reads sent with sendfile on plain sockets; the bytes are right (simple and structured replies,
 * one run or many), replies stay in order and whole when the client does not read for a while
 * (the socket fills up: a reply goes out in part and its rest is copied and queued, later ones
 * wait for the queue or go the usual way), small reads and uncached runs go the usual way.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { AllocationExtent, NbdExport, ReadSegment, WriteZeroesOptions } from '../../src/nbd/export.js';
import { hasNativeAddon } from '../../src/io/native.js';
import { startNbd } from '../support/nbd-harness.js';
import { tempDir } from '../support/tmp.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;

/** A file-backed export that can send from its file; the file's 64 KiB blocks are laid out in reverse so runs break at every block. */
class FileExport implements NbdExport {
  readonly readOnly = false;
  reads = 0;
  sends = 0;
  constructor(readonly name: string, readonly size: number, private readonly fd: number, private readonly scatter: boolean) {}
  private where(offset: number): number {
    if (!this.scatter) return offset;
    const b = Math.floor(offset / (64 * KiB));
    return (SIZE / (64 * KiB) - 1 - b) * 64 * KiB + (offset % (64 * KiB));
  }
  private runs(offset: number, length: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let pos = offset; pos < offset + length; ) {
      const n = Math.min(64 * KiB - (pos % (64 * KiB)), offset + length - pos);
      const at = this.where(pos);
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === at) last[1] += n;
      else out.push([at, n]);
      pos += n;
    }
    return out;
  }
  sendNow(offset: number, length: number, send: (fd: number, positions: number[], lengths: number[]) => void): boolean {
    const runs = this.runs(offset, length);
    if (runs.length > 64) return false;
    this.sends++;
    send(this.fd, runs.map((r) => r[0]), runs.map((r) => r[1]));
    return true;
  }
  async read(offset: number, length: number): Promise<ReadSegment[]> {
    this.reads++;
    const data = Buffer.allocUnsafe(length);
    let at = 0;
    for (const [pos, n] of this.runs(offset, length)) {
      readSync(this.fd, data, at, n, pos);
      at += n;
    }
    return [{ offset, length, data }];
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    let at = 0;
    for (const [pos, n] of this.runs(offset, data.length)) {
      writeSync(this.fd, data, at, n, pos);
      at += n;
    }
  }
  async flush(): Promise<void> {}
  async trim(): Promise<void> {}
  async writeZeroes(_o: number, _l: number, _opts: WriteZeroesOptions): Promise<void> {}
  async blockStatus(_offset: number, length: number): Promise<AllocationExtent[]> {
    return [{ length, hole: false, zero: false }];
  }
  async cache(): Promise<void> {}
}

function pattern(offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 4) b.writeUInt32LE(((offset + i) / 4) >>> 0, i);
  return b;
}

async function rig(scatter: boolean) {
  const dir = tempDir('thinpool-zc-');
  const fd = openSync(join(dir, 'data'), 'w+');
  const exp = new FileExport('disk', SIZE, fd, scatter);
  await exp.write(0, pattern(0, SIZE));
  const h = await startNbd([exp], { maxPayload: 4 * MiB });
  return { exp, h, close: async () => (await h.close(), closeSync(fd)) };
}

const zeroCopy = hasNativeAddon();

test(`large reads go out zero-copy and read right, simple and structured, one run or many${zeroCopy ? '' : ' (native addon missing: the usual path)'}`, async () => {
  for (const scatter of [false, true]) {
    const r = await rig(scatter);
    try {
      for (const structured of [true, false]) {
        const c = await r.h.client({ exportName: 'disk', structuredReplies: structured });
        for (const [off, len] of [[0, 64 * KiB], [4096, 256 * KiB], [5 * MiB + 512, MiB - 1024], [SIZE - 4 * MiB, 4 * MiB], [100, 4 * KiB]] as const) {
          assert.ok((await c.read(off, len)).equals(pattern(off, len)), `bytes at ${off}+${len} (scatter ${scatter}, structured ${structured})`);
        }
        await c.disconnect();
      }
      if (zeroCopy) {
        assert.ok(r.h.server.stats.zeroCopyReplies >= 8, `replies sent by reference: ${r.h.server.stats.zeroCopyReplies}`);
        assert.is(r.exp.reads, 2, 'only the two 4 KiB reads went the usual way');
      }
    } finally {
      await r.close();
    }
  }
});

test('a client that stops reading: replies go out in part, the rest queued, all whole and in order once it reads again', async () => {
  const r = await rig(true);
  try {
    const c = await r.h.client({ exportName: 'disk' });
    const stream = c.stream as import('node:net').Socket;
    stream.pause();
    const reqs: Array<Promise<Buffer>> = [];
    const want: Array<[number, number]> = [];
    for (let i = 0; i < 48; i++) {
      const off = ((i * 7919) % 60) * MiB + (i % 3) * 4096;
      const len = [256 * KiB, MiB, 64 * KiB, 3 * MiB][i % 4]!;
      want.push([off, len]);
      reqs.push(c.read(off, len));
    }
    // Writes in between: their replies queue behind the reads.
    const writes = [c.write(63 * MiB, pattern(63 * MiB, 128 * KiB))];
    await new Promise((res) => setTimeout(res, 300));
    stream.resume();
    const got = await Promise.all(reqs);
    await Promise.all(writes);
    for (let i = 0; i < got.length; i++) assert.ok(got[i]!.equals(pattern(want[i]![0], want[i]![1])), `read ${i} at ${want[i]![0]}+${want[i]![1]}`);
    await c.disconnect();
    if (zeroCopy) assert.ok(r.h.server.stats.zeroCopyReplies >= 1, 'some went by reference');
  } finally {
    await r.close();
  }
});

test.run();
