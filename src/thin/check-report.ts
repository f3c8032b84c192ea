/** The checker's report as text (`thinpool pool check` without --json). */
import type { CheckReport } from './check-issues.js';

/**
 * A report as text, one issue per line (like `thin_check`): a summary line, the issues, then
 * the verdict.
 * @example console.log(formatReport(await checkMetadata(file)));
 */
export function formatReport(report: CheckReport): string {
  const s = report.summary;
  const lines: string[] = [];
  lines.push(`transaction ${s.transactionId}, time ${s.time}, data block size ${s.dataBlockSize} sectors${s.heldRoot ? `, metadata snapshot at block ${s.heldRoot} (${s.snapshotDevices} devices)` : ''}`);
  lines.push(`${s.devices} devices, ${s.mappings} mappings; metadata blocks used ${s.metadataBlocksUsed}/${s.nrMetadataBlocks}; data blocks used ${s.dataBlocksUsed}/${s.nrDataBlocks}`);
  if (report.needsCheck) lines.push('needs_check: the superblock flag is set');
  for (const i of report.issues) {
    const at = [i.block !== undefined ? `block ${i.block}` : '', i.where ?? ''].filter(Boolean).join(', ');
    lines.push(`${i.severity} [${i.code}]${at ? ` (${at})` : ''}: ${i.message}`);
  }
  const verdict = report.ok
    ? s.leaks ? `ok with ${s.leaks} leak(s)` : 'ok'
    : `damaged`;
  lines.push(`${verdict}: ${s.damage} damage, ${s.leaks} leak(s), ${s.warnings} warning(s)`);
  return lines.join('\n') + '\n';
}
