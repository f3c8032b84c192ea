/**
 * WRITE replies at acceptance: an export that accepts a write (calls the server's `accepted`)
 * before its promise settles gets the write replied to at once; a FUA write is never offered
 * `accepted` and is replied to when it is done; a write that fails after its reply gets no second
 * reply (the connection stays in step) and the failure is logged; an export that never calls
 * `accepted` is replied to when the write resolves, with its error when it fails.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { NbdExport } from '../../src/nbd/export.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { Cmd, CmdFlag, NbdErr } from '../../src/nbd/protocol.js';
import { IoError } from '../../src/errors.js';
import { withTimeout } from '../support/nbd-client.js';
import { MiB, rig } from '../support/nbd-rig.js';

/** A memory export whose writes accept (when `early`), then wait for `open()`, then fail when `fail` is set. */
class LatchedExport extends MemoryExport {
  offered: Array<boolean> = [];
  done = 0;
  fail = false;
  early = true;
  private latch: Promise<void> = Promise.resolve();
  private release: () => void = () => undefined;

  close(): void {
    this.latch = new Promise((r) => (this.release = r));
  }
  open(): void {
    this.release();
  }

  override async write(offset: number, data: Uint8Array, fua: boolean, accepted?: () => void): Promise<void> {
    this.offered.push(accepted !== undefined);
    const latch = this.latch;
    if (this.early && accepted) {
      await super.write(offset, data, fua);
      accepted();
    }
    await latch;
    this.done++;
    if (this.fail) throw new IoError('Cannot write: injected after acceptance');
    if (!this.early || !accepted) await super.write(offset, data, fua);
  }
}

async function setup(): Promise<{ exp: LatchedExport; r: ReturnType<typeof rig> }> {
  const exp = new LatchedExport({ name: 'latched', size: MiB });
  const r = rig([exp as NbdExport]);
  return { exp, r };
}

test('an accepted write is replied to before its promise settles; FUA waits for it', async () => {
  const { exp, r } = await setup();
  const c = await r.connect({ exportName: 'latched' });
  exp.close();
  const reply = await withTimeout(c.request(Cmd.WRITE, 0, 0, 4096, Buffer.alloc(4096, 1)), 2000, 'reply before the write is over');
  assert.is(reply.error, 0);
  assert.is(exp.done, 0, 'the write is still in flight');
  let fuaReplied = false;
  const fua = c.request(Cmd.WRITE, CmdFlag.FUA, 4096, 4096, Buffer.alloc(4096, 2)).then((x) => ((fuaReplied = true), x));
  await new Promise((res) => setTimeout(res, 50));
  assert.is(fuaReplied, false, 'a FUA write is replied to when it is done');
  exp.open();
  assert.is((await fua).error, 0);
  assert.equal(exp.offered, [true, false]);
  assert.equal(await c.read(0, 4096), Buffer.alloc(4096, 1));
  await c.disconnect();
  await r.server.close();
});

test('a write failing after its reply gets no second reply; the failure is logged; without acceptance the error is the reply', async () => {
  const { exp, r } = await setup();
  const c = await r.connect({ exportName: 'latched' });
  exp.close();
  exp.fail = true;
  assert.is((await c.request(Cmd.WRITE, 0, 0, 512, Buffer.alloc(512, 3))).error, 0);
  exp.open();
  // The next requests get their own replies, in step.
  assert.equal(await c.read(0, 512), Buffer.alloc(512, 3));
  assert.is((await c.request(Cmd.FLUSH, 0, 0, 0)).error, 0, 'the memory export itself has nothing to report at FLUSH');
  assert.ok(r.logs.some((l) => /WRITE 0\+512 failed after its reply: Cannot write: injected after acceptance/.test(l)), r.logs.join('\n'));
  exp.early = false;
  assert.is((await c.request(Cmd.WRITE, 0, 512, 512, Buffer.alloc(512, 4))).error, NbdErr.EIO, 'not accepted: the failure is the reply');
  await c.disconnect();
  await r.server.close();
});

test.run();
