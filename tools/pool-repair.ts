/**
 * `thinpool pool repair [-o FILE]`: thin_repair for a pool directory (src/pool/repair-pool.ts),
 * and the report of what was kept and lost.
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { repairPool } from '../src/pool/repair-pool.js';
import { print, printJson, spinner } from './output.js';
import type { Ctx } from './thinpool.js';

/** Adds `repair` to the `pool` command. */
export function registerPoolRepair(pool: Command, ctx: Ctx): void {
  pool
    .command('repair')
    .description('build new metadata from what is still reachable in damaged metadata (like thin_repair); the pool must not be open. The old metadata is kept as metadata.bak')
    .option('-o, --output <file>', 'write the repaired metadata to FILE (a new file) and leave the pool alone')
    .option('--json', 'print what was kept and lost as JSON')
    .action(async (o: { output?: string; json?: boolean }, cmd: Command) => {
      const dir = ctx.poolDir(cmd);
      ctx.doing(`repair ${dir}`);
      const bar = spinner('repairing the metadata');
      let r;
      try {
        r = await repairPool(dir, o.output !== undefined ? { output: resolve(o.output) } : {});
      } finally {
        bar.stop();
      }
      const s = r.summary;
      if (o.json) {
        const { restore, ...rest } = s;
        return printJson({ ...rest, metadataBlocksUsed: restore.metadataBlocksUsed, written: r.written, ...(r.backup ? { backup: r.backup } : {}) });
      }
      print(`repaired ${dir}: kept ${s.devices} device${s.devices === 1 ? '' : 's'} and ${s.mappings} mappings; wrote ${r.written}${r.backup ? ` (old metadata: ${r.backup})` : ''}`);
      print(`the walk found ${s.damage} damaged spot${s.damage === 1 ? '' : 's'}${s.firstDamage.length ? `, first: ${s.firstDamage[0]}` : ''}`);
      if (s.devicesLost.length) print(`lost: device${s.devicesLost.length === 1 ? '' : 's'} ${s.devicesLost.join(', ')} (details found, mapping tree unreadable)`);
      if (s.mappingsMissing) print(`lost: at least ${s.mappingsMissing} mapping${s.mappingsMissing === 1 ? '' : 's'} of the kept devices (their mapped_blocks say more than was readable)`);
      if (s.mappingsPastEnd) print(`dropped: ${s.mappingsPastEnd} mapping${s.mappingsPastEnd === 1 ? '' : 's'} to data blocks past the pool's end`);
      if (s.devicesWithoutDetails.length) print(`note: device${s.devicesWithoutDetails.length === 1 ? '' : 's'} ${s.devicesWithoutDetails.join(', ')} had no details (times set to 0)`);
    });
}
