// A timer that calls `tick` every `ms` ms while it is on: a view turns it
// on when it comes on show and off when it goes away, so that nothing
// runs for a view that is not shown.

export class Every {
  constructor(ms, tick) {
    this.ms = ms;
    this.tick = tick;
    this.id = null;
  }

  get on() {
    return this.id !== null;
  }

  set(on) {
    if (on === this.on) return;
    if (on) {
      this.id = setInterval(this.tick, this.ms);
    } else {
      clearInterval(this.id);
      this.id = null;
    }
  }
}
