// Energy and cost of one meter over the periods people ask about, with this
// week and this month set against the same days a year ago. Calendar
// periods come from the server, in the meter's time zone.

import * as api from "./api.js";
import * as t from "./time.js";

const HOUR = 3600000;
const DAY = 24 * HOUR;

// The row of an energy answer whose period holds the instant `at`.
function rowAt(answer, at) {
  return answer.rows.find((row) => row.start <= at && at < row.end) || null;
}

export class Summary {
  constructor(meter, body, report) {
    this.meter = meter;
    this.body = body;
    this.report = report;
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
      const rows = [
        ["Today", this.total(dayStart, now)],
        ["Last 24 hours", this.total(now - DAY, now)],
        ["Last 7 days", this.total(now - 7 * DAY, now)],
        ["This month", this.total(monthStart, now)],
        ["Last 365 days", this.total(now - 365 * DAY, now)],
        ["This week so far", this.total(weekStart, now)],
        ["Same days last year", this.total(lastYearWeekStart, lastYearWeekStart + (now - weekStart)), true],
        ["This month so far", this.total(monthStart, now)],
        ["Same days last year", this.total(lastYearMonthStart, lastYearMonthStart + (now - monthStart)), true],
      ];
      const totals = await Promise.all(rows.map((row) => row[1]));
      this.render(rows.map((row, i) => ({ label: row[0], total: totals[i], against: Boolean(row[2]) })), totals);
      this.body.dataset.updated = String(now);
      this.report(null);
    } catch (error) {
      this.report(error.message);
    }
  }

  render(rows, totals) {
    const meter = this.meter;
    const hasCost = Boolean(meter.price_per_kwh || meter.tariff);
    this.body.replaceChildren(...rows.map((row, i) => {
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
