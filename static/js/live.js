// The live stream of points (Server-Sent Events from /api/v1/live).
//
// While the connection only stumbles, the browser reconnects by itself and
// the server replays what was missed (Last-Event-ID). When the server
// refuses the stream, it is reopened with growing delays and the page is
// told to reload what it shows, since points may have been missed.

import { backoff } from "./time.js";

export class LiveStream {
  constructor(meterIds, { onPoint, onState, onResync }) {
    this.url = `api/v1/live?meters=${meterIds.join(",")}`;
    this.onPoint = onPoint;
    this.onState = onState;
    this.onResync = onResync;
    this.delay = 0;
    this.source = null;
    this.retry = null;
  }

  // Open the stream (again); `resync` when points may have been missed
  // since it was last open.
  start(resync = false) {
    this.stop();
    this.open(resync);
  }

  // Close the stream, and give up reopening it, until started again.
  stop() {
    clearTimeout(this.retry);
    this.retry = null;
    this.source?.close();
    this.source = null;
  }

  open(resync) {
    const source = new EventSource(this.url);
    this.source = source;
    this.onState("connecting");
    source.addEventListener("open", () => {
      this.delay = 0;
      this.onState("live");
      if (resync) {
        resync = false;
        this.onResync();
      }
    });
    source.addEventListener("point", (event) => {
      let point;
      try {
        point = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onPoint(point);
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        this.onState("down");
        source.close();
        this.delay = backoff(this.delay);
        this.retry = setTimeout(() => {
          this.retry = null;
          this.open(true);
        }, this.delay);
      } else {
        this.onState("connecting");
      }
    });
  }
}
