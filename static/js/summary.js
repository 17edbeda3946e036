// Energy and cost of one meter over the periods people ask about, with this
// week and this month set against the same days a year ago. Each figure is
// the total of one energy request for exactly its range, in periods coarse
// enough that the answer is a row or two; calendar periods start at
// midnight in the meter's time zone.

import * as api from "./api.js";
import { Fresh } from "./fresh.js";
import * as t from "./time.js";

const MINUTE = 60000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
// Refreshed this often while on show.
const EVERY = 5 * MINUTE;

// The coarsest calendar period whose rows a range of `span` ms spans only a
// few of.
function periodFor(span) {
  if (span <= DAY + HOUR) return "day";
  if (span <= 7 * DAY + HOUR) return "week";
  if (span <= 32 * DAY) return "month";
  return "year";
}

// The rows: a label, and the range [from, to) given the minute `now` and
// its local date, ISO weekday and time in the meter's zone; `against` is the
// row a "year earlier" row is compared with.
const ROWS = [
  { label: "Today", range: (now, { date }) => [`${date}T00:00`, now] },
  { label: "Last 24 hours", range: (now) => [now - DAY, now] },
  { label: "Last 7 days", range: (now) => [now - 7 * DAY, now] },
  { label: "This week", range: (now, { date, weekday }) => [`${t.addDays(date, 1 - weekday)}T00:00`, now] },
  {
    label: "a year earlier", against: 3,
    // The same weekdays 52 weeks before.
    range: (now, { date, weekday }) => [`${t.addDays(date, 1 - weekday - 364)}T00:00`, now - 364 * DAY],
  },
  { label: "This month", range: (now, { date }) => [`${date.slice(0, 8)}01T00:00`, now] },
  {
    label: "a year earlier", against: 5,
    range: (now, { date, time }) => [`${t.addYears(date, -1).slice(0, 8)}01T00:00`, `${t.addYears(date, -1)}T${time}`],
  },
  { label: "Last 365 days", range: (now) => [now - 365 * DAY, now] },
];

export class Summary {
  constructor(meter, body, report) {
    this.meter = meter;
    this.body = body;
    this.active = false;
    this.fresh = new Fresh(EVERY, () => this.active, () => this.load(), report);
    // The rows are there from the start, so that nothing below them moves
    // when the numbers arrive.
    this.body.replaceChildren(...ROWS.map((row) => {
      const tr = document.createElement("tr");
      if (row.against != null) tr.className = "against";
      for (const text of [row.label, "…", "…", ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  setActive(active) {
    this.active = active;
    if (active) this.refresh(false);
  }

  // Ask again when on show and the figures are older than EVERY (or now,
  // when `force`).
  refresh(force = true) {
    return this.fresh.refresh(force);
  }

  async load() {
    // Whole minutes, as the server counts.
    const now = Math.floor(Date.now() / MINUTE) * MINUTE;
    const here = t.local(now, this.meter.timezone);
    const ranges = ROWS.map((row) => row.range(now, here));
    const totals = await Promise.all(ranges.map(([from, to]) => {
      const span = (typeof to === "number" ? to : Date.parse(to)) - (typeof from === "number" ? from : Date.parse(from));
      return api.energy(this.meter.id, from, to, periodFor(span)).then((answer) => answer.total);
    }));
    this.render(totals, ranges);
    this.body.dataset.updated = String(now);
  }

  render(totals, ranges) {
    const meter = this.meter;
    const hasCost = Boolean(meter.price_per_kwh || meter.tariff);
    [...this.body.rows].forEach((tr, i) => {
      const total = totals[i];
      const cells = tr.cells;
      cells[1].textContent = t.kwh(total.kwh);
      cells[2].textContent = hasCost ? t.number(total.cost, 2) : "–";
      const against = ROWS[i].against;
      cells[3].className = "diff";
      cells[3].textContent = "";
      cells[3].title = "";
      if (against != null) {
        const now = totals[against].kwh;
        const before = total.kwh;
        if (before > 0) {
          const percent = (now - before) / before * 100;
          cells[3].textContent = `${percent >= 0 ? "+" : "−"}${t.number(Math.abs(percent), 1)} %`;
          cells[3].classList.add(percent > 0 ? "up" : "down");
          cells[3].title = `${ROWS[against].label.toLowerCase()} against the same days a year earlier`;
        } else {
          cells[3].textContent = "no data";
        }
      }
      Object.assign(tr.dataset, {
        kwh: String(total.kwh), cost: String(total.cost),
        from: String(ranges[i][0]), to: String(ranges[i][1]),
      });
    });
  }
}
