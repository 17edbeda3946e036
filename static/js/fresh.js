// Keeps what a view shows fresh while it is on show: `load()` runs when
// the view comes on show and what it loaded is older than `every` ms, when
// it grows that old (looked at every LOOK ms), and at once when asked. A
// load that fails is reported and tried again at the next look.

import { Every } from "./every.js";
import { LOOK } from "./time.js";

export class Fresh {
  constructor(every, load, report) {
    Object.assign(this, { every, load, report });
    this.at = 0;
    this.looking = new Every(LOOK, () => this.refresh(false));
  }

  // On show (looking, and loading if due) or not (nothing at all).
  setShown(shown) {
    this.looking.set(shown);
    if (shown) this.refresh(false);
  }

  // Load now if on show (unless `force` is false and what is shown is
  // recent enough).
  async refresh(force = true) {
    if (!this.looking.on || (!force && Date.now() - this.at < this.every)) return;
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
