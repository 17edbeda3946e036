// The history of one meter: power over a day, week, month, year or chosen
// dates, with zoom and pan, and the energy per hour, day, week or month
// beneath.
// Where the logger was down, both charts show it.

import * as api from "./api.js";
import { energyChart, powerChart } from "./charts.js";
import { Every } from "./every.js";
import { breakAtOutages } from "./gaps.js";
import * as t from "./time.js";
import { DAY, MINUTE, SECOND, WEEK } from "./time.js";

const SPANS = { day: DAY, week: WEEK, month: 30 * DAY, year: 365 * DAY };
// Energy bars: in the finest period that makes at most this many (hours
// for a day or two, days for a week or a month, months for a year), so
// that each stays wide enough to point at.
const BARS = 48;

// Rows of power to ask for: enough for minute resolution over a day or two
// on any screen (the server answers with raw points, minutes, hours or
// wider buckets, whichever fits), a few thousand at most.
function maxPoints(width) {
  return Math.min(4000, Math.max(3000, width * 2));
}

export class History {
  constructor(meter, section, report) {
    this.meter = meter;
    this.report = report;
    this.rangeLabel = section.querySelector("[data-role=range]");
    this.periodLabel = section.querySelector("[data-role=energy-period]");
    this.viewButtons = [...section.querySelectorAll("[data-view]")];
    this.loading = 0;
    this.view = "day";
    this.whole = null;
    this.range = null;
    this.rows = [];
    this.rowOf = [];
    this.raw = false;
    this.outages = [];
    this.bars = [];
    this.barPeriod = "day";
    this.loadedAt = 0;

    const tz = meter.timezone;
    this.power = powerChart(section.querySelector("[data-role=power-chart]"), tz, {
      onZoom: (from, to) => this.load(from, to),
      onReset: () => this.reset(),
      outages: () => this.outages,
      describe: (u, idx) => {
        const row = this.rows[this.rowOf[idx]];
        if (!row) return null;
        const [time, mean, min, max] = row;
        const spread = min === max ? "" : ` (${t.watts(min)}–${t.watts(max)})`;
        return `${t.dateTime(time, tz, this.raw)}: ${t.watts(mean)} W${spread}`;
      },
    });
    this.energy = energyChart(section.querySelector("[data-role=energy-chart]"), tz, (u) => {
      const at = u.posToVal(u.cursor.left, "x") * SECOND;
      const row = this.bars.find((r) => r.start <= at && at < r.end);
      if (!row) return null;
      const cost = meter.price_per_kwh || meter.tariff ? `, ${t.number(row.cost, 2)} ${meter.currency}` : "";
      return `${t.periodLabel(row.start, this.barPeriod, tz)}: ${t.number(row.kwh, 2)} kWh${cost}`;
    });

    for (const button of this.viewButtons) {
      button.addEventListener("click", () => this.show(button.dataset.view));
    }
    for (const button of section.querySelectorAll("[data-pan]")) {
      button.addEventListener("click", () => this.pan(Number(button.dataset.pan)));
    }
    for (const button of section.querySelectorAll("[data-zoom]")) {
      button.addEventListener("click", () => this.zoom(Number(button.dataset.zoom)));
    }
    section.querySelector("[data-role=reset]").addEventListener("click", () => this.reset());
    const form = section.querySelector("[data-role=custom]");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.custom(form.elements.from.value, form.elements.to.value);
    });
    this.form = form;
    this.sliding = new Every(MINUTE, () => this.slide());
  }

  // Show or hide: a hidden history asks the server for nothing, and its
  // charts do not follow the page's width.
  setActive(active) {
    this.sliding.set(active);
    this.power.follow(active);
    this.energy.follow(active);
    if (active && !this.whole) this.show(this.view);
    else if (active) this.slide();
  }

  // Slide a view that ends now along with time, less often the longer it
  // is (when a thousandth of it has passed): every 1.5 min for a day, 10
  // min for a week.
  slide() {
    if (!this.whole || this.range !== this.whole || this.view === "custom") return;
    const span = this.whole.to - this.whole.from;
    if (Date.now() - this.loadedAt >= Math.max(MINUTE, span / 1000)) this.show(this.view);
  }

  show(view) {
    this.view = view;
    for (const button of this.viewButtons) {
      button.setAttribute("aria-pressed", String(button.dataset.view === view));
    }
    const now = Date.now();
    this.whole = { from: now - SPANS[view], to: now };
    this.load(this.whole.from, this.whole.to, true);
  }

  custom(fromDate, toDate) {
    if (!fromDate || !toDate || toDate < fromDate) {
      this.report("choose a start date before the end date");
      return;
    }
    for (const button of this.viewButtons) button.setAttribute("aria-pressed", "false");
    this.view = "custom";
    // A date without a zone means midnight in the meter's zone.
    this.load(`${fromDate}T00:00:00`, `${t.addDays(toDate, 1)}T00:00:00`, true);
  }

  reset() {
    if (this.whole) this.load(this.whole.from, this.whole.to, true);
  }

  pan(direction) {
    if (!this.range) return;
    const shift = (this.range.to - this.range.from) / 2 * direction;
    this.load(this.range.from + shift, this.range.to + shift);
  }

  // Zoom in (1) to the middle half, or out (-1) to twice the span.
  zoom(direction) {
    if (!this.range) return;
    const middle = (this.range.from + this.range.to) / 2;
    const half = (this.range.to - this.range.from) / 2 * (direction > 0 ? 0.5 : 2);
    if (direction > 0 && half < 5 * MINUTE) return;
    this.load(middle - half, Math.min(middle + half, Date.now() + half / 10));
  }

  async load(from, to, isWhole = false) {
    const ticket = ++this.loading;
    const width = this.power.width || 600;
    const period = t.periodFor(from, to, BARS);
    try {
      const [power, energy, outages] = await Promise.all([
        api.power(this.meter.id, from, to, maxPoints(width)),
        api.energy(this.meter.id, from, to, period),
        api.outages(this.meter.id, from, to),
      ]);
      if (ticket !== this.loading) return;
      this.loadedAt = Date.now();
      const range = { from: power.from, to: power.to };
      if (isWhole) this.whole = range;
      this.range = isWhole ? this.whole : range;
      this.rows = power.points;
      this.raw = power.resolution_ms === 0;
      this.outages = outages;
      const { data, rows } = breakAtOutages([
        power.points.map((p) => p[0] / SECOND),
        power.points.map((p) => p[1]),
        power.points.map((p) => p[2]),
        power.points.map((p) => p[3]),
      ], outages);
      this.rowOf = rows;
      this.power.setData(data, false);
      this.power.setScale("x", { min: range.from / SECOND, max: range.to / SECOND });
      const tz = this.meter.timezone;
      const resolution = this.raw ? " · every blip" : ` · one value per ${t.duration(power.resolution_ms)}`;
      this.rangeLabel.textContent = `${t.dateTime(range.from, tz)} – ${t.dateTime(range.to, tz)}${resolution}`;
      this.form.elements.from.value = t.isoDate(range.from, tz);
      this.form.elements.to.value = t.isoDate(range.to - 1, tz);

      this.barPeriod = period;
      this.periodLabel.textContent = period;
      this.bars = energy.rows;
      this.energy.period = period;
      this.energy.setData([energy.rows.map((r) => r.start / SECOND), energy.rows.map((r) => r.kwh)], false);
      this.energy.setScale("x", { min: range.from / SECOND, max: range.to / SECOND });
      this.report(null);
    } catch (error) {
      if (ticket === this.loading) this.report(error.message);
    }
  }
}
