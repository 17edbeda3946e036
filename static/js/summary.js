// Energy and cost of one meter over the periods people ask about, with this
// week and this month set against the same days a year ago. Calendar
// periods come from the server, in the meter's time zone.

import * as api from "./api.js";
import * as t from "./time.js";

const HOUR = 3600000;
const DAY = 24 * HOUR;
const LABELS = [
  "Today", "Last 24 hours", "Last 7 days", "This month", "Last 365 days",
  "This week so far", "Same days last year", "This month so far", "Same days last year",
];

// The row of an energy answer whose period holds the instant `at`.
function rowAt(answer, at) {
  return answer.rows.find((row) => row.start <= at && at < row.end) || null;
}

export class Summary {
  constructor(meter, body, report) {
    this.meter = meter;
    this.body = body;
    this.report = report;
    // The rows are there from the start, so that nothing below them moves
    // when the numbers arrive.
    this.body.replaceChildren(...LABELS.map((label) => {
      const tr = document.createElement("tr");
      for (const text of [label, "…", "…", ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  // Energy from `from` to `to` (ms): { kwh, cost }.
  async total(from, to) {
    if (to <= from) return { kwh: 0, cost: 0 };
    return (await api.energy(this.meter.id, Math.round(from), Math.round(to), "hour")).total;
  }

  // The start of the calendar `period` holding `at`.
  async periodStart(period, at) {
    const answer = await api.energy(this.meter.id, Math.round(at - 40 * DAY), Math.round(at), period);
    const row = rowAt(answer, at - 1) || answer.rows[answer.rows.length - 1];
    return row ? row.start : at;
  }

  async refresh() {
    const now = Date.now();
    try {
      const [dayStart, weekStart, monthStart] = await Promise.all([
        this.periodStart("day", now), this.periodStart("week", now), this.periodStart("month", now),
      ]);
      // The same weekday a year ago, and the same date a year ago.
      const weekAgo = now - 364 * DAY;
      const monthAgoDate = new Date(now);
      monthAgoDate.setFullYear(monthAgoDate.getFullYear() - 1);
      const monthAgo = monthAgoDate.getTime();
      const [lastYearWeekStart, lastYearMonthStart] = await Promise.all([
        this.periodStart("week", weekAgo), this.periodStart("month", monthAgo),
      ]);
      const totals = await Promise.all([
        this.total(dayStart, now),
        this.total(now - DAY, now),
        this.total(now - 7 * DAY, now),
        this.total(monthStart, now),
        this.total(now - 365 * DAY, now),
        this.total(weekStart, now),
        this.total(lastYearWeekStart, lastYearWeekStart + (now - weekStart)),
        this.total(monthStart, now),
        this.total(lastYearMonthStart, lastYearMonthStart + (now - monthStart)),
      ]);
      this.render(totals);
      this.body.dataset.updated = String(now);
      this.report(null);
    } catch (error) {
      this.report(error.message);
    }
  }

  // The rows "Same days last year" compare with the row above them.
  render(totals) {
    const meter = this.meter;
    const hasCost = Boolean(meter.price_per_kwh || meter.tariff);
    this.body.replaceChildren(...totals.map((total, i) => {
      const row = { label: LABELS[i], total, against: LABELS[i] === "Same days last year" };
      const tr = document.createElement("tr");
      const cells = [
        row.label,
        t.number(row.total.kwh, row.total.kwh < 100 ? 2 : 0),
        hasCost ? `${t.number(row.total.cost, 2)} ${meter.currency}` : "–",
      ];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      const diff = document.createElement("td");
      diff.className = "diff";
      if (row.against) {
        const now = totals[i - 1].kwh;
        const before = row.total.kwh;
        if (before > 0) {
          const percent = (now - before) / before * 100;
          diff.textContent = `${percent >= 0 ? "+" : "−"}${t.number(Math.abs(percent), 1)} %`;
          diff.classList.add(percent > 0 ? "up" : "down");
          diff.title = "this year against the same days last year";
        } else {
          diff.textContent = "no data";
        }
      }
      tr.appendChild(diff);
      tr.dataset.kwh = String(row.total.kwh);
      return tr;
    }));
  }
}
