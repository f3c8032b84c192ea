/**
 * Worker of the metadata fuzz test: mutates a base image by case seed and runs the readers over
 * it (metadata-fuzz.ts), one case per message, so the test can time out a case that hangs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { join } from 'node:path';
import type { BlockKind } from './patch.js';
import { type CaseResult, mutate, runCase } from './metadata-fuzz.js';

interface Data {
  bases: Array<{ name: string; img: Uint8Array; kinds: BlockKind[] }>;
  scratchDir: string;
}
export interface FuzzRequest {
  i: number;
  base: number;
  seed: number;
  /** Write the image for thin_check 1.x. */
  oracle: boolean;
}
export interface FuzzReply {
  i: number;
  result?: CaseResult;
  /** Something the worker itself could not do (a bug in the harness or an uncaught throw). */
  error?: string;
}

const data = workerData as Data;
parentPort!.on('message', (req: FuzzRequest | 'done') => {
  // Leaving by itself: terminate() while V8 compiles in the background can abort Node 20
  if (req === 'done') return parentPort!.close();
  const base = data.bases[req.base]!;
  void (async () => {
    try {
      const m = mutate(base.img, base.kinds, req.seed);
      const result = await runCase(m.img, `${base.name} #${req.seed}: ${m.what}`, req.oracle ? { scratch: join(data.scratchDir, `case-${req.i}`) } : {});
      parentPort!.postMessage({ i: req.i, result } satisfies FuzzReply);
    } catch (err) {
      parentPort!.postMessage({ i: req.i, error: (err as Error)?.stack ?? String(err) } satisfies FuzzReply);
    }
  })();
});
