// Energy and cost of one meter over the periods people ask about, with this
// week and this month set against the same days a year ago. Each figure is
// the total of one energy request for exactly its range; calendar periods
// start at midnight in the meter's time zone.

import * as api from "./api.js";
import { Fresh } from "./fresh.js";
import * as t from "./time.js";
import { DAY } from "./time.js";

// The rows: a label, and the range [from, to) given the minute `now` and
// its local date, ISO weekday and time in the meter's zone; `against` is the
// row a "year earlier" row is compared with.
const ROWS = [
  { label: "Today", range: (now, { date }) => [t.dayStart(date), now] },
  { label: "Last 24 hours", range: (now) => [now - DAY, now] },
  { label: "Last 7 days", range: (now) => [now - 7 * DAY, now] },
  { label: "This week", range: (now, { date, weekday }) => [t.dayStart(t.addDays(date, 1 - weekday)), now] },
  {
    label: "a year earlier", against: 3,
    // The same weekdays 52 weeks before.
    range: (now, { date, weekday }) => [t.dayStart(t.addDays(date, 1 - weekday - 364)), now - 364 * DAY],
  },
  { label: "This month", range: (now, { date }) => [t.monthStart(date), now] },
  {
    label: "a year earlier", against: 5,
    range: (now, { date, time }) => [t.monthStart(t.addYears(date, -1)), `${t.addYears(date, -1)}T${time}`],
  },
  { label: "Last 365 days", range: (now) => [now - 365 * DAY, now] },
];

export class Summary {
  constructor(meter, body, report) {
    this.meter = meter;
    this.body = body;
    this.fresh = new Fresh(t.REFRESH.summary, () => this.load(), report);
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
    this.fresh.setShown(active);
  }

  async load() {
    // Whole minutes, as the server counts.
    const now = t.wholeMinute(Date.now());
    const here = t.local(now, this.meter.timezone);
    const totals = await Promise.all(ROWS.map((row) => api.total(this.meter.id, ...row.range(now, here))));
    this.render(totals);
  }

  render(totals) {
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
    });
  }
}
