// The power page: every meter side by side, and one meter's views at a
// time, fed by the live stream. While the page is hidden (another tab, a
// phone's screen off), nothing runs: no timers, no stream.

import * as api from "./js/api.js";
import { LiveStream } from "./js/live.js";
import { MeterView } from "./js/meter.js";
import { Overview } from "./js/overview.js";
import * as t from "./js/time.js";

const problem = document.getElementById("problem");
const connection = document.getElementById("connection");
const nav = document.getElementById("meters");

function report(message) {
  problem.hidden = !message;
  problem.textContent = message || "";
}

async function start() {
  let meters;
  for (let delay = t.backoff(); ; delay = t.backoff(delay)) {
    try {
      meters = await api.meters();
      break;
    } catch (error) {
      report(error instanceof api.Unreachable ? error.message : `${error.message}; trying again`);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
  report(null);
  if (!meters.length) {
    report("no meters yet");
    return;
  }
  const template = document.getElementById("meter-template");
  const main = document.getElementById("main");
  const views = new Map();
  let chosen = null;
  // Show meter `id`: its views on show, its tab pressed, its card current.
  const show = (id) => {
    chosen = id;
    for (const view of views.values()) {
      view.setActive(view.meter.id === id);
      view.tab.setAttribute("aria-pressed", String(view.meter.id === id));
    }
    overview.choose(id);
    history.replaceState(null, "", `#meter-${id}`);
  };
  const overview = new Overview(meters, document.getElementById("overview"), report, show);
  for (const meter of meters) {
    const section = template.content.firstElementChild.cloneNode(true);
    section.id = `meter-${meter.id}`;
    section.setAttribute("aria-label", meter.label || `Meter ${meter.id}`);
    section.hidden = true;
    main.appendChild(section);
    const view = new MeterView(meter, section, report);
    const tab = document.createElement("button");
    tab.type = "button";
    tab.textContent = meter.label || `Meter ${meter.id}`;
    const live = document.createElement("span");
    live.className = "w";
    tab.appendChild(live);
    tab.addEventListener("click", () => show(meter.id));
    view.tab = tab;
    view.onWatts = (point) => {
      live.textContent = `${t.watts(point.watts)} W`;
      overview.watts(meter.id, point);
    };
    if (meter.last) view.onWatts(meter.last);
    nav.appendChild(tab);
    views.set(meter.id, view);
  }
  nav.hidden = meters.length < 2;
  const wanted = Number((location.hash.match(/^#meter-(\d+)$/) || [])[1]);
  show(views.has(wanted) ? wanted : meters[0].id);
  overview.setActive(true);
  document.title = meters.length === 1 ? `Power · ${meters[0].label}` : "Power";

  const stream = new LiveStream([...views.keys()], {
    onPoint: (point) => {
      views.get(point.meter)?.add(point);
      overview.add(point);
    },
    onState: (state) => {
      connection.dataset.state = state;
      connection.textContent = { live: "live", connecting: "connecting…", down: "reconnecting…" }[state];
    },
    onResync: () => {
      views.forEach((view) => { if (view.started) view.reload(); });
      overview.refresh(true);
    },
  });
  stream.start();

  // Hidden, the page stops everything; shown again, it starts again and
  // loads what may have been missed.
  let shown = true;
  const visibility = () => {
    if (shown === (document.visibilityState === "visible")) return;
    shown = !shown;
    views.forEach((view) => view.setActive(shown && view.meter.id === chosen));
    overview.setActive(shown);
    if (shown) stream.start(true);
    else stream.stop();
  };
  document.addEventListener("visibilitychange", visibility);
  visibility();
}

start();
