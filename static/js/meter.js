// One meter on the page: its power now, the last 20 minutes live, its
// energy summary, its history and its heatmap. Only the meter on show asks
// the server for its summary, history and heatmap, and only it keeps
// timers and observers running.

import * as api from "./api.js";
import { liveChart } from "./charts.js";
import { Every } from "./every.js";
import { breakAtOutages } from "./gaps.js";
import { Heatmap } from "./heatmap.js";
import { History } from "./history.js";
import { Summary } from "./summary.js";
import * as t from "./time.js";
import { LIVE_WINDOW, LONG_BLIP, MINUTE, QUIET, SECOND, TICK } from "./time.js";

export class MeterView {
  constructor(meter, section, report) {
    this.meter = meter;
    this.section = section;
    this.report = report;
    this.points = [];
    this.outages = [];
    this.rowOf = [];
    this.last = null;
    this.started = false;
    this.wattsText = section.querySelector("[data-role=watts]");
    this.lastText = section.querySelector("[data-role=last]");
    this.silentText = section.querySelector("[data-role=silent]");
    section.querySelector("[data-role=currency]").textContent = meter.currency || "cost";
    const tz = meter.timezone;
    // Watts of one blip per ms between blips: to tell a raw point's blip time.
    this.factor = 3.6e9 * meter.multiplier / meter.pulses_per_kwh;
    this.chart = liveChart(section.querySelector("[data-role=live-chart]"), tz, (u, idx) => {
      const point = this.points[this.rowOf[idx]];
      if (!point) return null;
      const when = point.stamp == null ? `${t.clock(point.time, tz)} (mean of a minute)` : t.clock(point.stamp, tz);
      return `${when}: ${t.watts(point.watts)} W`;
    }, () => this.outages);
    this.summary = new Summary(meter, section.querySelector("[data-role=summary]"), report);
    this.history = new History(meter, section, report);
    this.heatmap = new Heatmap(meter, section.querySelector("[data-role=heatmap]"), report);
    this.onWatts = () => {};
    if (meter.last) this.show(meter.last);
    this.ticking = new Every(TICK, () => this.tick());
  }

  // Show the meter (loading what it shows the first time) or hide it.
  setActive(active) {
    this.section.hidden = !active;
    this.ticking.set(active);
    this.chart.follow(active);
    if (active && !this.started) {
      this.started = true;
      this.reload();
    }
    if (active) this.tick();
    this.history.setActive(active);
    this.summary.setActive(active);
    this.heatmap.setActive(active);
  }

  // Reload the last 20 minutes, its outages and the last blip (at start,
  // and when live points may have been missed).
  async reload() {
    const now = Date.now();
    try {
      const [answer, outages, settings] = await Promise.all([
        api.power(this.meter.id, now - LIVE_WINDOW, now, 5000),
        api.outages(this.meter.id, now - LIVE_WINDOW, now),
        api.meter(this.meter.id),
      ]);
      const raw = answer.resolution_ms === 0;
      const loaded = answer.points.map(([time, mean]) => ({
        time, watts: mean, stamp: raw ? Math.round(time + this.factor / mean / 2) : null,
      }));
      // Live points that came while this was asked for stay.
      const newest = loaded.length ? loaded[loaded.length - 1].time : -Infinity;
      this.points = loaded.concat(this.points.filter((p) => p.time > newest));
      this.outages = outages;
      if (settings.last && (!this.last || settings.last.stamp > this.last.stamp)) this.show(settings.last);
      this.redraw();
    } catch (error) {
      this.report(error.message);
    }
  }

  async reloadOutages() {
    const now = Date.now();
    try {
      this.outages = await api.outages(this.meter.id, now - LIVE_WINDOW, now);
      this.redraw();
    } catch (error) {
      this.report(error.message);
    }
  }

  // A new point from the live stream.
  add(point) {
    this.show(point);
    if (!this.started) return;
    this.points.push({ time: point.stamp - point.ms / 2, watts: point.watts, stamp: point.stamp });
    this.redraw();
    if (point.ms > LONG_BLIP) this.reloadOutages();
  }

  show(point) {
    if (this.last && point.stamp < this.last.stamp) return;
    this.last = point;
    this.wattsText.textContent = t.watts(point.watts);
    this.lastText.textContent =
      `last blip ${t.clock(point.stamp, this.meter.timezone)}, ${t.duration(point.ms)} after the one before`;
    this.onWatts(point);
    this.tick();
  }

  redraw() {
    const start = Date.now() - LIVE_WINDOW - MINUTE;
    while (this.points.length && this.points[0].time < start) this.points.shift();
    this.outages = this.outages.filter((o) => o.to >= start);
    const { data, rows } = breakAtOutages(
      [this.points.map((p) => p.time / SECOND), this.points.map((p) => p.watts)], this.outages,
    );
    this.rowOf = rows;
    this.chart.setData(data, false);
    this.tick();
  }

  // Slide the window with time; say so when the meter has gone quiet.
  tick() {
    const now = Date.now();
    if (!this.section.hidden) this.chart.setScale("x", { min: (now - LIVE_WINDOW) / SECOND, max: now / SECOND });
    const last = this.last;
    const quiet = last ? now - last.stamp : null;
    const expected = last ? Math.max(QUIET, 3 * last.ms) : 0;
    if (last && quiet > expected) {
      this.silentText.hidden = false;
      this.silentText.textContent = `no data for ${t.duration(quiet)}`;
    } else {
      this.silentText.hidden = true;
    }
  }
}
