// One meter on the page: its power now, the last 20 minutes live, its
// energy summary and its history.

import * as api from "./api.js";
import { liveChart } from "./charts.js";
import { History } from "./history.js";
import { Summary } from "./summary.js";
import * as t from "./time.js";

const WINDOW = 20 * 60000;

export class MeterView {
  constructor(meter, section, report) {
    this.meter = meter;
    this.section = section;
    this.report = report;
    this.points = [];
    this.last = null;
    this.wattsText = section.querySelector("[data-role=watts]");
    this.lastText = section.querySelector("[data-role=last]");
    this.silentText = section.querySelector("[data-role=silent]");
    section.querySelector("[data-role=currency]").textContent = meter.currency || "cost";
    const tz = meter.timezone;
    this.chartBox = section.querySelector("[data-role=live-chart]");
    this.chart = liveChart(this.chartBox, tz, (u, idx) => {
      const point = this.points[idx];
      return point ? `${t.clock(point.stamp, tz)}: ${t.watts(point.watts)} W` : null;
    });
    this.summary = new Summary(meter, section.querySelector("[data-role=summary]"), report);
    this.history = new History(meter, section, report);
    this.onWatts = () => {};
  }

  async start() {
    if (this.meter.last) this.show(this.meter.last);
    await this.reload();
    this.history.show("day");
    this.summary.refresh();
    setInterval(() => this.summary.refresh(), 60000);
    setInterval(() => this.tick(), 1000);
  }

  // Reload the last 20 minutes (at start, and when live points may have
  // been missed).
  async reload() {
    const now = Date.now();
    try {
      const answer = await api.power(this.meter.id, now - WINDOW, now, 5000);
      const raw = answer.resolution_ms === 0;
      this.points = answer.points.map(([time, mean]) => ({
        time, watts: mean, stamp: raw ? null : time,
      }));
      this.redraw();
    } catch (error) {
      this.report(error.message);
    }
  }

  // A new point from the live stream.
  add(point) {
    this.points.push({ time: point.stamp - point.ms / 2, watts: point.watts, stamp: point.stamp });
    this.show(point);
    this.redraw();
  }

  show(point) {
    this.last = point;
    this.wattsText.textContent = t.watts(point.watts);
    this.lastText.textContent =
      `last blip ${t.clock(point.stamp, this.meter.timezone)}, ${t.duration(point.ms)} after the one before`;
    this.onWatts(point.watts);
    this.tick();
  }

  redraw() {
    const start = Date.now() - WINDOW - 60000;
    while (this.points.length && this.points[0].time < start) this.points.shift();
    this.chart.setData([this.points.map((p) => p.time / 1000), this.points.map((p) => p.watts)], false);
    this.tick();
    this.chartBox.dataset.points = String(this.points.length);
  }

  // Slide the window with time; say so when the meter has gone quiet.
  tick() {
    const now = Date.now();
    this.chart.setScale("x", { min: (now - WINDOW) / 1000, max: now / 1000 });
    const last = this.last;
    const quiet = last ? now - last.stamp : null;
    const expected = last ? Math.max(60000, 3 * last.ms) : 0;
    if (last && quiet > expected) {
      this.silentText.hidden = false;
      this.silentText.textContent = `no data for ${t.duration(quiet)}`;
    } else {
      this.silentText.hidden = true;
    }
  }
}
