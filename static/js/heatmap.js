// The last eight weeks of a meter's energy as an hour-of-day × day grid,
// so that base load and habits show at a glance. Days are the meter's local
// days: a day of 23 hours has an empty cell, one of 25 counts its repeated
// hour in one cell.

import * as api from "./api.js";
import { Fresh } from "./fresh.js";
import * as t from "./time.js";

const DAYS = 56;
// Days across rather than down when the grid is at least this wide (px).
const WIDE = 700;

// The colour of a share (0-1) of the scale: from --heat-lo through
// --heat-mid to --heat-hi.
function colour(share) {
  const p = Math.round(Math.min(1, Math.max(0, share)) * 200);
  return p <= 100
    ? `color-mix(in oklab, var(--heat-mid) ${p}%, var(--heat-lo))`
    : `color-mix(in oklab, var(--heat-hi) ${p - 100}%, var(--heat-mid))`;
}

export class Heatmap {
  constructor(meter, element, report) {
    this.meter = meter;
    this.element = element;
    this.fresh = new Fresh(t.REFRESH.heatmap, () => this.load(), report);
    this.days = [];
    this.grid = element.querySelector(".heat-grid");
    this.legend = element.querySelector(".heat-legend");
    this.tip = element.querySelector(".tooltip");
    this.wide = null;
    this.resizing = new ResizeObserver(() => this.layout());
    const point = (event) => {
      const cell = event.target.closest(".cell");
      if (!cell || !this.grid.contains(cell)) {
        this.tip.hidden = true;
        return;
      }
      this.tip.textContent = cell.dataset.label;
      this.tip.hidden = false;
      const box = element.getBoundingClientRect();
      const at = cell.getBoundingClientRect();
      const x = at.left - box.left + at.width / 2 - this.tip.offsetWidth / 2;
      this.tip.style.left = `${Math.min(Math.max(0, x), box.width - this.tip.offsetWidth)}px`;
      this.tip.style.top = `${at.top - box.top - this.tip.offsetHeight - 4}px`;
    };
    this.grid.addEventListener("pointerover", point);
    this.grid.addEventListener("click", point);
    this.grid.addEventListener("pointerleave", () => { this.tip.hidden = true; });
  }

  // On show, the grid follows the element's width and is kept fresh.
  setActive(active) {
    if (active) this.resizing.observe(this.element);
    else this.resizing.disconnect();
    this.fresh.setShown(active);
  }

  async load() {
    const tz = this.meter.timezone;
    const now = Date.now();
    const today = t.local(now, tz).date;
    const first = t.addDays(today, 1 - DAYS);
    const answer = await api.energy(this.meter.id, t.dayStart(first), now, "hour");
    const cells = new Map();
    for (const row of answer.rows) {
      const { date, hour } = t.local(row.start, tz);
      const key = `${date} ${hour}`;
      const cell = cells.get(key);
      if (cell) cell.kwh += row.kwh;
      else cells.set(key, { date, hour, start: row.start, kwh: row.kwh });
    }
    this.days = [];
    for (let d = 0; d < DAYS; d++) {
      const date = t.addDays(first, d);
      this.days.push({ date, hours: Array.from({ length: 24 }, (_, h) => cells.get(`${date} ${h}`) || null) });
    }
    this.render();
  }

  render() {
    const values = this.days.flatMap((d) => d.hours.filter(Boolean).map((c) => c.kwh)).sort((a, b) => a - b);
    // The top of the scale: nearly the highest hour, so that one spike does
    // not wash out the rest.
    const top = values.length ? values[Math.floor((values.length - 1) * 0.98)] : 0;
    const scale = top > 0 ? top : 1;
    const cells = [];
    this.days.forEach((day, d) => {
      const [y, m, dd] = day.date.split("-").map(Number);
      const noon = Date.UTC(y, m - 1, dd, 12);
      const weekday = new Date(noon).getUTCDay();
      // A label for each week from Monday; the first days' own only when
      // there is room for it.
      const firstDays = d === 0 && weekday !== 1 && (8 - weekday) % 7 >= 3;
      if (weekday === 1 || firstDays) {
        const label = document.createElement("div");
        label.className = "day-label";
        label.textContent = t.dayLabel(noon, "UTC").replace(/^\w+,? /, "");
        label.dataset.day = String(d);
        label.dataset.span = String(Math.min(weekday === 1 ? 7 : (8 - weekday) % 7 || 7, DAYS - d));
        cells.push(label);
      }
      day.hours.forEach((cell, h) => {
        const div = document.createElement("div");
        div.className = cell ? "cell" : "cell none";
        div.dataset.day = String(d);
        div.dataset.hour = String(h);
        const when = `${t.dayLabel(noon, "UTC")}, ${t.hourLabel(h)}–${t.hourLabel((h + 1) % 24)}`;
        if (cell) {
          div.style.background = colour(cell.kwh / scale);
          div.dataset.label = `${when}: ${t.number(cell.kwh, 2)} kWh`;
        } else {
          div.dataset.label = `${when}: no data`;
        }
        cells.push(div);
      });
    });
    for (let h = 0; h < 24; h += 3) {
      const label = document.createElement("div");
      label.className = "hour-label";
      label.textContent = t.hourLabel(h);
      label.dataset.hour = String(h);
      cells.push(label);
    }
    this.grid.replaceChildren(...cells);
    const clipped = values.length && values[values.length - 1] > top;
    this.legend.querySelector("[data-role=top]").textContent = `${clipped ? "≥ " : ""}${t.number(top, 2)} kWh`;
    this.wide = null;
    this.layout();
  }

  // Days across on a wide screen, down on a narrow one.
  layout() {
    const wide = this.element.clientWidth >= WIDE;
    if (wide === this.wide || !this.days.length) return;
    this.wide = wide;
    this.grid.classList.toggle("wide", wide);
    for (const div of this.grid.children) {
      const day = Number(div.dataset.day);
      const hour = Number(div.dataset.hour);
      let column;
      let row;
      if (div.classList.contains("day-label")) {
        const span = `span ${div.dataset.span}`;
        [column, row] = wide ? [`${day + 2} / ${span}`, "1"] : ["1", `${day + 2} / ${span}`];
      } else if (div.classList.contains("hour-label")) {
        [column, row] = wide ? ["1", `${hour + 2} / span 3`] : [`${hour + 2} / span 3`, "1"];
      } else {
        [column, row] = wide ? [day + 2, hour + 2] : [hour + 2, day + 2];
      }
      div.style.gridColumn = String(column);
      div.style.gridRow = String(row);
    }
  }
}
