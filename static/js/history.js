// The history of one meter: power over a day, week, month, year or chosen
// dates, with zoom and pan, and the energy per hour, day or month beneath.

import * as api from "./api.js";
import { energyChart, powerChart } from "./charts.js";
import * as t from "./time.js";

const DAY = 86400000;
const SPANS = { day: DAY, week: 7 * DAY, month: 30 * DAY, year: 365 * DAY };

// The calendar period of the energy bars for a span of time.
function periodFor(span) {
  if (span <= 3 * DAY) return "hour";
  if (span <= 93 * DAY) return "day";
  if (span <= 3 * 366 * DAY) return "month";
  return "year";
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
    this.bars = [];
    this.barPeriod = "day";

    const tz = meter.timezone;
    this.powerBox = section.querySelector("[data-role=power-chart]");
    this.energyBox = section.querySelector("[data-role=energy-chart]");
    this.power = powerChart(this.powerBox, tz, {
      onZoom: (from, to) => this.load(from, to),
      onReset: () => this.reset(),
      describe: (u, idx) => {
        const row = this.rows[idx];
        if (!row) return null;
        const [time, mean, min, max] = row;
        const spread = min === max ? "" : ` (${t.watts(min)}–${t.watts(max)})`;
        return `${t.dateTime(time, tz)}: ${t.watts(mean)} W${spread}`;
      },
    });
    this.energy = energyChart(this.energyBox, tz, (u, idx) => {
      const row = this.bars[idx];
      if (!row) return null;
      const cost = meter.currency || meter.price_per_kwh ? `, ${t.number(row.cost, 2)} ${meter.currency}` : "";
      return `${t.periodLabel(row.start, this.barPeriod, tz)}: ${t.number(row.kwh, 2)} kWh${cost}`;
    });

    for (const button of this.viewButtons) {
      button.addEventListener("click", () => this.show(button.dataset.view));
    }
    for (const button of section.querySelectorAll("[data-pan]")) {
      button.addEventListener("click", () => this.pan(Number(button.dataset.pan)));
    }
    section.querySelector("[data-role=reset]").addEventListener("click", () => this.reset());
    const form = section.querySelector("[data-role=custom]");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.custom(form.elements.from.value, form.elements.to.value);
    });
    this.form = form;
    // Slide a view that ends now along with time.
    setInterval(() => {
      if (this.range && this.whole && this.range === this.whole && Date.now() - this.whole.to < 10 * 60000) {
        this.show(this.view);
      }
    }, 60000);
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
    this.load(`${fromDate}T00:00:00`, `${toDate}T23:59:59`, true);
  }

  reset() {
    if (this.whole) this.load(this.whole.from, this.whole.to, true);
  }

  pan(direction) {
    if (!this.range) return;
    const shift = (this.range.to - this.range.from) / 2 * direction;
    this.load(this.range.from + shift, this.range.to + shift);
  }

  async load(from, to, isWhole = false) {
    const ticket = ++this.loading;
    const width = this.power.width || 600;
    // Dates from the form are local to the meter; their span is near enough
    // to choose the bars' period.
    const span = (typeof to === "number" ? to : Date.parse(to)) - (typeof from === "number" ? from : Date.parse(from));
    const period = periodFor(span);
    try {
      const [power, energy] = await Promise.all([
        api.power(this.meter.id, from, to, Math.min(2000, width * 2)),
        api.energy(this.meter.id, from, to, period),
      ]);
      if (ticket !== this.loading) return;
      const range = { from: power.from, to: power.to };
      if (isWhole) this.whole = range;
      this.range = isWhole ? this.whole : range;
      this.rows = power.points;
      this.power.setData([
        power.points.map((p) => p[0] / 1000),
        power.points.map((p) => p[1]),
        power.points.map((p) => p[2]),
        power.points.map((p) => p[3]),
      ], false);
      this.power.setScale("x", { min: range.from / 1000, max: range.to / 1000 });
      const tz = this.meter.timezone;
      const resolution = power.resolution_ms ? ` · one value per ${t.duration(power.resolution_ms)}` : "";
      this.rangeLabel.textContent = `${t.dateTime(range.from, tz)} – ${t.dateTime(range.to, tz)}${resolution}`;
      this.form.elements.from.value = t.isoDate(range.from, tz);
      this.form.elements.to.value = t.isoDate(range.to, tz);

      this.barPeriod = period;
      this.periodLabel.textContent = period;
      this.bars = energy.rows;
      this.energy.setData([energy.rows.map((r) => r.start / 1000), energy.rows.map((r) => r.kwh)], false);
      this.energy.setScale("x", { min: range.from / 1000, max: range.to / 1000 });
      // Both charts change together; the figures tell tests what is shown.
      this.energyBox.dataset.bars = String(energy.rows.length);
      Object.assign(this.powerBox.dataset, {
        points: String(power.points.length), from: String(range.from), to: String(range.to),
      });
      this.report(null);
    } catch (error) {
      if (ticket === this.loading) this.report(error.message);
    }
  }
}
