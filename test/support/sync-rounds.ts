/**
 * Counting the syncs of a pool and how many of them had to happen one after another.
 *
 * {@link SyncRounds} holds every sync (fdatasync, or the sync of a writeDurable) of the files it
 * watches until nothing else happens (a number of event-loop turns with no new sync), then lets
 * all held syncs complete together: one round. Code that issues its syncs together needs one
 * round for them; code that waits for one sync before issuing the next needs one round per
 * step. So `rounds` is the length of the longest chain of syncs that waited for each other,
 * whatever the timing of a real disk.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { FaultyBlockFile, FaultyFiles, Power } from './faulty-file.js';

export class SyncRounds {
  /** Rounds of syncs released so far. */
  rounds = 0;
  private held: Array<() => void> = [];
  private pumping = false;

  /** Resolves when the round this sync belongs to is released. */
  hold(): Promise<void> {
    return new Promise((resolve) => {
      this.held.push(resolve);
      if (!this.pumping) this.pump();
    });
  }

  private pump(): void {
    this.pumping = true;
    let seen = -1;
    let idle = 0;
    const tick = () => {
      if (this.held.length !== seen) {
        seen = this.held.length;
        idle = 0;
      } else if (++idle >= 20) {
        const release = this.held.splice(0);
        this.rounds++;
        this.pumping = false;
        for (const r of release) r();
        return;
      }
      setImmediate(tick);
    };
    setImmediate(tick);
  }
}

/** A faulty (in-memory) file whose syncs are counted and held by a {@link SyncRounds}. */
export class CountingFile extends FaultyBlockFile {
  constructor(path: string, image: Uint8Array, power: Power, private readonly rounds: SyncRounds) {
    super(path, image, power);
  }

  override async sync(): Promise<void> {
    await this.rounds.hold();
    await super.sync();
  }
}

/** The files of a closed pool directory as counting in-memory files on one power supply. */
export class CountingFiles extends FaultyFiles {
  readonly syncRounds = new SyncRounds();

  constructor(dir: string) {
    super();
    for (const name of readdirSync(dir)) {
      if (name === 'lock') continue;
      this.files.set(name, new CountingFile(name, readFileSync(join(dir, name)), this.power, this.syncRounds));
    }
  }

  override async open(name: string): Promise<FaultyBlockFile> {
    let f = this.files.get(name);
    if (!f) {
      f = new CountingFile(name, new Uint8Array(0), this.power, this.syncRounds);
      this.files.set(name, f);
    }
    return f;
  }

  /** Syncs per file and rounds since the last {@link reset}. */
  counts(): { syncs: Record<string, number>; rounds: number } {
    const syncs: Record<string, number> = {};
    for (const [name, f] of this.files) if (f.syncs) syncs[name] = f.syncs;
    return { syncs, rounds: this.syncRounds.rounds };
  }

  reset(): void {
    for (const f of this.files.values()) f.syncs = 0;
    this.syncRounds.rounds = 0;
  }
}
