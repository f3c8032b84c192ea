/**
 * Runs the real thin-provisioning-tools on a metadata file and compares them with a model:
 * thin_check 0.9 and 1.x clean, thin_dump equal to the model's XML, thin_ls counts equal.
 */
import * as assert from 'uvu/assert';
import { run, tool09, tool1x } from './oracles.js';
import type { ThinModel } from './thin-model.js';

export const haveThinTools = (): boolean => !!(tool09('thin_check') && tool09('thin_dump') && tool1x('thin_check') && tool1x('thin_ls'));

/** Both thin_check versions accept the file with exit 0 and report nothing. */
export async function assertThinCheckClean(path: string): Promise<void> {
  for (const exe of [tool09('thin_check')!, tool1x('thin_check')!]) {
    const r = await run(exe, [path]);
    const out = r.stdout + r.stderr;
    assert.is(r.code, 0, `${exe} ${path} exited ${r.code}:\n${out}`);
    assert.not.match(out, /leak|error|differ|bad|mismatch/i, `${exe} ${path} complained:\n${out}`);
  }
}

/** Real thin_dump (0.9) output of a metadata file. */
export async function realDump(path: string, args: string[] = []): Promise<string> {
  const r = await run(tool09('thin_dump')!, [...args, path]);
  assert.is(r.code, 0, `thin_dump failed: ${r.stderr}`);
  return r.stdout;
}

/** Real thin_ls (1.x) counts per device. */
export async function realLs(path: string, args: string[] = []): Promise<Map<number, { mapped: number; exclusive: number; shared: number }>> {
  const r = await run(tool1x('thin_ls')!, ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', ...args, path]);
  assert.is(r.code, 0, `thin_ls failed: ${r.stderr}`);
  const out = new Map<number, { mapped: number; exclusive: number; shared: number }>();
  for (const line of r.stdout.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/).map(Number);
    if (f.length === 4 && f.every(Number.isFinite)) out.set(f[0]!, { mapped: f[1]!, exclusive: f[2]!, shared: f[3]! });
  }
  return out;
}

/** Everything the real tools can say about `path` agrees with `model`. */
export async function assertToolsAgree(path: string, model: ThinModel): Promise<void> {
  await assertThinCheckClean(path);
  assert.fixture(await realDump(path), model.toXml());
  const ls = await realLs(path);
  assert.equal(Object.fromEntries(ls), Object.fromEntries(model.lsCounts()));
}
