// Keeps what a view shows fresh: `load()` runs again when the view is on
// show (`shown()`) and what it loaded is older than `every` ms — looked at
// every LOOK ms — or at once when asked. A load that fails is reported and
// tried again at the next look.

import { LOOK } from "./time.js";

export class Fresh {
  constructor(every, shown, load, report) {
    Object.assign(this, { every, shown, load, report });
    this.at = 0;
    setInterval(() => this.refresh(false), LOOK);
  }

  // Load now if on show (unless `force` is false and what is shown is
  // recent enough).
  async refresh(force = true) {
    if (!this.shown() || (!force && Date.now() - this.at < this.every)) return;
    this.at = Date.now();
    try {
      await this.load();
      this.report(null);
    } catch (error) {
      this.at = 0;
      this.report(error.message);
    }
  }

  // Load again at the next look.
  stale() {
    this.at = 0;
  }
}
