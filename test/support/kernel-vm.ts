/**
 * Runs a guest script in a VM with the real Linux dm-thin-pool target (scripts/kernel-dm-thin.sh),
 * with a pool's metadata file as /dev/vda and its data file as /dev/vdb.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { haveTools, isRoot, run } from './oracles.js';
import { tempDir } from './tmp.js';
import { accessSync, constants, existsSync, readdirSync } from 'node:fs';

const SCRIPT = new URL('../../../scripts/kernel-dm-thin.sh', import.meta.url).pathname;

/** True when this machine can boot the kernel VM (qemu, a kernel with dm-thin-pool, busybox, dmsetup). */
export function haveKernelVm(): boolean {
  if (!haveTools('qemu-system-x86_64', 'busybox', 'dmsetup', 'cpio')) return false;
  if (!existsSync('/lib/modules')) return false;
  return readdirSync('/lib/modules').some((k) => {
    try {
      accessSync(`/boot/vmlinuz-${k}`, constants.R_OK); // root-only (0600) on Debian
      return true;
    } catch {
      return false;
    }
  });
}

export const kernelVmWhy = 'qemu-system-x86, linux-image-amd64 (a readable kernel image: root), busybox-static, dmsetup and cpio are needed for the kernel VM';
export { isRoot };

/** Runs `guest` (busybox sh) in the VM; resolves with its output, rejects when the VM or the script fails. */
export async function runInKernel(metadata: string, data: string, guest: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const dir = tempDir('thinpool-vm-');
  const script = join(dir, 'guest.sh');
  writeFileSync(script, `set -e\n${guest}\n`);
  const r = await run('bash', [SCRIPT, metadata, data, script], { env: { ...process.env, ...env }, timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`kernel VM exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Lines `KEY value...` printed by a guest, as a map of KEY -> rest of line. */
export function guestValues(out: string, key: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === key && f.length >= 3) m.set(f[1]!, f.slice(2).join(' '));
  }
  return m;
}
