// Every meter side by side: its power now and its energy today and this
// month, with a total. Energy is asked for every few minutes; each blip
// seen live in between adds its share.

import * as api from "./api.js";
import { Fresh } from "./fresh.js";
import * as t from "./time.js";
import { MINUTE } from "./time.js";

// Energy since the start of a day or month: as answered up to `to` (for
// the local `date`), plus the blips seen live since.
function tally() {
  return { kwh: null, cost: 0, to: 0, date: null };
}

export class Overview {
  constructor(meters, element, report, choose) {
    this.meters = meters;
    this.element = element;
    this.cards = new Map();
    this.fresh = new Fresh(t.REFRESH.overview, () => this.load(), report);
    const template = element.querySelector("template");
    for (const meter of meters) {
      const card = template.content.firstElementChild.cloneNode(true);
      card.querySelector("[data-role=name]").textContent = meter.label || `Meter ${meter.id}`;
      card.tabIndex = 0;
      card.title = "show this meter";
      card.addEventListener("click", () => choose(meter.id));
      card.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          choose(meter.id);
        }
      });
      element.insertBefore(card, template);
      this.cards.set(meter.id, {
        meter, card, watts: null, today: tally(), month: tally(), recent: [],
        hasCost: Boolean(meter.price_per_kwh || meter.tariff),
        price: meter.tariff ? null : meter.price_per_kwh,
      });
    }
    this.total = template.content.firstElementChild.cloneNode(true);
    this.total.classList.add("total");
    this.total.querySelector("[data-role=name]").textContent = "Total";
    this.total.querySelector("[data-role=watts]").textContent = "–";
    element.insertBefore(this.total, template);
    for (const meter of meters) if (meter.last) this.watts(meter.id, meter.last);
    element.hidden = meters.length < 2;
  }

  // On show (while the page is, with several meters) it is kept fresh.
  setActive(active) {
    this.fresh.setShown(active && !this.element.hidden);
  }

  // Mark meter `id`'s card as the one whose views are on show.
  choose(id) {
    for (const [meter, { card }] of this.cards) card.setAttribute("aria-current", String(meter === id));
  }

  watts(id, point) {
    const entry = this.cards.get(id);
    if (!entry || (entry.watts && entry.watts.stamp > point.stamp)) return;
    entry.watts = point;
    entry.card.querySelector("[data-role=watts]").textContent = t.watts(point.watts);
    this.render();
  }

  // A blip seen live: its power, and its energy on top of the last answer.
  add(point) {
    const entry = this.cards.get(point.meter);
    if (!entry) return;
    this.watts(point.meter, point);
    entry.recent = entry.recent.filter((p) => p.stamp > point.stamp - 2 * MINUTE).concat([point]);
    this.count(entry, point);
    this.render();
  }

  count(entry, point) {
    const kwh = entry.meter.multiplier / entry.meter.pulses_per_kwh;
    const date = t.local(point.stamp, entry.meter.timezone).date;
    for (const tally of [entry.today, entry.month]) {
      if (tally.kwh == null || point.stamp < tally.to) continue;
      const same = tally === entry.today ? date === tally.date : date.slice(0, 7) === tally.date.slice(0, 7);
      if (!same) {
        // A new day or month: ask again rather than guess.
        this.fresh.stale();
        continue;
      }
      tally.kwh += kwh;
      if (entry.price != null) tally.cost += kwh * entry.price;
    }
  }

  refresh(force = false) {
    return this.fresh.refresh(force);
  }

  async load() {
    const to = t.wholeMinute(Date.now());
    await Promise.all([...this.cards.values()].map(async (entry) => {
      const { date } = t.local(to, entry.meter.timezone);
      const [today, month] = await Promise.all([
        api.total(entry.meter.id, t.dayStart(date), to),
        api.total(entry.meter.id, t.monthStart(date), to),
      ]);
      Object.assign(entry.today, { kwh: today.kwh, cost: today.cost, to, date });
      Object.assign(entry.month, { kwh: month.kwh, cost: month.cost, to, date });
      // Blips seen while asking and not counted in the answer.
      for (const point of entry.recent) this.count(entry, point);
    }));
    this.render();
  }

  render() {
    const entries = [...this.cards.values()];
    for (const { card, today, month, hasCost, meter } of entries) {
      this.energy(card, "today", today, hasCost ? { [meter.currency]: today.cost } : {});
      this.energy(card, "month", month, hasCost ? { [meter.currency]: month.cost } : {});
    }
    // The total power of the meters heard from, and energy summed over all;
    // costs only within a currency.
    const heard = entries.filter((e) => e.watts);
    const watts = heard.reduce((sum, e) => sum + e.watts.watts, 0);
    this.total.querySelector("[data-role=watts]").textContent = heard.length ? t.watts(watts) : "–";
    for (const which of ["today", "month"]) {
      const known = entries.filter((e) => e[which].kwh != null);
      if (known.length < entries.length) continue;
      const costs = {};
      for (const e of entries) {
        if (e.hasCost) costs[e.meter.currency] = (costs[e.meter.currency] || 0) + e[which].cost;
      }
      const kwh = entries.reduce((sum, e) => sum + e[which].kwh, 0);
      this.energy(this.total, which, { kwh }, costs);
    }
  }

  energy(card, which, tally, costs) {
    if (tally.kwh == null) return;
    const box = card.querySelector(`[data-role=${which}]`);
    box.querySelector(".kwh").textContent = `${t.kwh(tally.kwh)} kWh`;
    box.querySelector(".cost").textContent = Object.entries(costs)
      .map(([currency, cost]) => `${t.number(cost, 2)} ${currency}`.trim()).join(" + ");
  }
}
