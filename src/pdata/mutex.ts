/**
 * An async mutex: `run` executes functions one at a time, in call order. An uncontended `run`
 * starts the function in the same tick.
 */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  private busy = false;
  private waiting = 0;

  /** Runs `fn` when every earlier `run` has settled; resolves or rejects with its result. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.busy && this.waiting === 0) {
      this.busy = true;
      const p = fn().finally(() => {
        this.busy = false;
      });
      this.tail = p.catch(() => undefined);
      return p;
    }
    this.waiting++;
    const p = this.tail.then(() => {
      this.waiting--;
      this.busy = true;
      return fn().finally(() => {
        this.busy = false;
      });
    });
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** True while a function runs or waits. */
  get locked(): boolean {
    return this.busy || this.waiting > 0;
  }
}
