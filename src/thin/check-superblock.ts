/**
 * The checker's superblock checks (block 0 and the held metadata snapshot's copy): the validator
 * (checksum, own block number), then magic, version, flags, feature flags and block sizes, with
 * the kernel's verdict on each (damage where it refuses the metadata, a warning where it does not).
 */
import type { Block } from '../pdata/block-manager.js';
import type { IssueList } from './check-issues.js';
import { validate } from './check-walk.js';
import {
  NEEDS_CHECK_FLAG, type Superblock, THIN_MAGIC, THIN_VERSION, superblockValidator, unpackSuperblock, validDataBlockSize,
} from './superblock.js';

/** Validates a superblock (block 0 or the held copy); returns it unless it is unusable. */
export function checkSuperblock(issues: IssueList, b: Block, nr: number, what: string): Superblock | undefined {
  const bad = validate(b, superblockValidator, 'superblock');
  const sb = unpackSuperblock(b);
  let csumOk = true;
  if (bad) {
    const [code, message] = bad;
    if (code === 'superblock-checksum' || code === 'wrong-block-type') csumOk = false;
    issues.damage(code, message, nr, what);
  }
  if (!csumOk || bad?.[0] === 'superblock-blocknr') {
    // The validator stopped early: check what it did not get to.
    if (!csumOk && sb.blocknr !== nr) issues.damage('superblock-blocknr', `Cannot read ${what} at block ${nr}: it says it is block ${sb.blocknr}`, nr, what);
    if (sb.magic !== THIN_MAGIC) issues.damage('superblock-magic', `Cannot read ${what} at block ${nr}: magic ${sb.magic}, expected ${THIN_MAGIC}`, nr, what);
  }
  if (!csumOk && sb.magic !== THIN_MAGIC) return undefined;
  if (sb.version !== THIN_VERSION) issues.warning('superblock-version', `${cap(what)} version is ${sb.version}, expected ${THIN_VERSION}`, nr, what);
  if (sb.flags & ~NEEDS_CHECK_FLAG) issues.warning('superblock-flags', `${cap(what)} has unknown flags ${sb.flags}, expected only bit 0 (needs_check)`, nr, what);
  if (sb.incompatFlags) issues.damage('superblock-incompat', `Cannot interpret the metadata: ${what} has incompatible feature flags ${sb.incompatFlags}, expected 0`, nr, what);
  if (sb.compatRoFlags) issues.damage('superblock-compat-ro', `Cannot write the metadata: ${what} has read-only-compatible feature flags ${sb.compatRoFlags} no writer here knows, expected 0`, nr, what);
  if (sb.compatFlags) issues.warning('superblock-compat', `${cap(what)} has compatible feature flags ${sb.compatFlags}, expected 0`, nr, what);
  if (!validDataBlockSize(sb.dataBlockSize)) issues.damage('data-block-size', `Cannot use ${what}: data block size ${sb.dataBlockSize} sectors, expected a multiple of 128 in 128..2097152`, nr, what);
  if (sb.metadataBlockSize !== 8) issues.damage('metadata-block-size', `Cannot use ${what}: metadata block size ${sb.metadataBlockSize} sectors, expected 8`, nr, what);
  return sb;
}

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
