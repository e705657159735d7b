// Every timer the simulator starts on behalf of a request (fault delays, slow bodies, Prefer: wait) goes
// through one TimerSet, so close() can clear them all and a closed simulator leaves nothing behind on the event loop.

// setTimeout silently turns larger values into 1 ms (with a warning); a fault of "forever" should mean forever-ish.
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export class TimerSet {
  private readonly live = new Set<NodeJS.Timeout>();

  after(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.live.delete(t);
      fn();
    }, Math.min(Math.max(0, ms), MAX_TIMEOUT_MS));
    this.live.add(t);
    return t;
  }

  cancel(t: NodeJS.Timeout): void {
    clearTimeout(t);
    this.live.delete(t);
  }

  clear(): void {
    for (const t of this.live) clearTimeout(t);
    this.live.clear();
  }
}
