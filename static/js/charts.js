// uPlot charts with what every chart of the page shares: the meter's time
// zone on the time axis, the page's colours, a tooltip, and a width that
// follows the page.

import { outageBands } from "./gaps.js";
import { PERIODS, SECOND } from "./time.js";

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function colours() {
  return {
    ink: css("--ink"), muted: css("--muted"), line: css("--line"),
    accent: css("--accent"), accentSoft: css("--accent-soft"), energy: css("--energy"),
    gap: css("--gap"),
  };
}

function axes(c, unit) {
  return [
    { stroke: c.muted, grid: { stroke: c.line, width: 1 }, ticks: { stroke: c.line } },
    {
      stroke: c.muted, grid: { stroke: c.line, width: 1 }, ticks: { stroke: c.line },
      size: 56, values: (u, values) => values.map((v) => `${v}${unit ? " " + unit : ""}`),
    },
  ];
}

// A tooltip following the cursor; `describe(u, idx)` gives its text, or
// null to hide it.
function tooltip(describe) {
  let tip;
  return {
    hooks: {
      init: (u) => {
        tip = document.createElement("div");
        tip.className = "tooltip";
        tip.setAttribute("role", "tooltip");
        tip.hidden = true;
        u.over.appendChild(tip);
        u.over.addEventListener("mouseleave", () => { tip.hidden = true; });
      },
      setCursor: (u) => {
        const { left, top, idx } = u.cursor;
        const text = idx == null || left < 0 ? null : describe(u, idx);
        if (!text) {
          tip.hidden = true;
          return;
        }
        tip.textContent = text;
        tip.hidden = false;
        const width = u.over.clientWidth;
        const x = left + 12 + tip.offsetWidth > width ? left - tip.offsetWidth - 12 : left + 12;
        tip.style.left = `${Math.max(0, x)}px`;
        tip.style.top = `${Math.max(0, top - 10)}px`;
      },
    },
  };
}

// A chart of `height` px in `element`, as wide as it, with times in
// `timeZone` and no legend; `options` gives the rest. `follow(true)` makes
// it follow the element's width while on show, `follow(false)` stops it.
function timeChart(element, timeZone, height, options, data) {
  const u = new uPlot({
    width: element.clientWidth || 600,
    height,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * SECOND), timeZone),
    legend: { show: false },
    ...options,
  }, data, element);
  const observer = new ResizeObserver(() => {
    const width = element.clientWidth;
    if (width > 0 && width !== u.width) u.setSize({ width, height });
  });
  u.follow = (on) => (on ? observer.observe(element) : observer.disconnect());
  return u;
}

// Drag across the chart with a finger to select a range, as a mouse does:
// horizontal moves select, vertical ones scroll the page.
function touchSelect(onSelect) {
  return {
    hooks: {
      init: (u) => {
        const over = u.over;
        let start = null;
        const x = (touch) => {
          const rect = over.getBoundingClientRect();
          return Math.min(Math.max(touch.clientX - rect.left, 0), rect.width);
        };
        over.addEventListener("touchstart", (event) => {
          start = event.touches.length === 1
            ? { x: event.touches[0].clientX, y: event.touches[0].clientY, left: x(event.touches[0]), moved: false }
            : null;
        }, { passive: true });
        over.addEventListener("touchmove", (event) => {
          if (!start) return;
          const touch = event.touches[0];
          const dx = touch.clientX - start.x;
          const dy = touch.clientY - start.y;
          if (!start.moved) {
            if (Math.abs(dy) > Math.abs(dx)) {
              start = null;
              return;
            }
            if (Math.abs(dx) < 8) return;
            start.moved = true;
          }
          const here = x(touch);
          u.setSelect({
            left: Math.min(start.left, here), width: Math.abs(here - start.left),
            top: 0, height: over.clientHeight,
          }, false);
        }, { passive: true });
        const end = () => {
          if (start && start.moved) {
            const { left, width } = u.select;
            u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
            if (width >= 8) onSelect(u.posToVal(left, "x") * SECOND, u.posToVal(left + width, "x") * SECOND);
          }
          start = null;
        };
        over.addEventListener("touchend", end);
        over.addEventListener("touchcancel", () => {
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          start = null;
        });
      },
    },
  };
}

// The live chart: power over the last minutes, a point per blip; the
// outages of `outages()` (ms) are shaded and labelled.
export function liveChart(element, timeZone, describe, outages) {
  const c = colours();
  return timeChart(element, timeZone, 200, {
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(10, (max || 0) * 1.1)] } },
    series: [
      {},
      {
        label: "W", stroke: c.accent, width: 2, fill: c.accentSoft, spanGaps: false,
        points: { show: true, size: 4 },
      },
    ],
    axes: axes(c, ""),
    plugins: [tooltip(describe), outageBands(outages, c)],
  }, [[], []]);
}

// The history of power: the mean as a line inside the band from the lowest
// to the highest power of each row. Dragging (with a mouse or a finger)
// selects a range to zoom to; double-clicking resets.
export function powerChart(element, timeZone, { onZoom, onReset, describe, outages }) {
  const c = colours();
  return timeChart(element, timeZone, 260, {
    cursor: {
      drag: { x: true, y: false, setScale: false },
      bind: { dblclick: () => () => { onReset(); return null; } },
    },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(10, (max || 0) * 1.05)] } },
    series: [
      {},
      { label: "mean W", stroke: c.accent, width: 1.5, spanGaps: false, points: { show: false } },
      { label: "min W", stroke: "transparent", spanGaps: false, points: { show: false } },
      { label: "max W", stroke: "transparent", spanGaps: false, points: { show: false } },
    ],
    bands: [{ series: [3, 2], fill: c.accentSoft }],
    axes: axes(c, ""),
    hooks: {
      setSelect: [(u) => {
        const { left, width } = u.select;
        if (width < 4) return;
        const from = u.posToVal(left, "x") * SECOND;
        const to = u.posToVal(left + width, "x") * SECOND;
        u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
        onZoom(from, to);
      }],
    },
    plugins: [tooltip(describe), outageBands(outages, c), touchSelect(onZoom)],
  }, [[], [], [], []]);
}

// Energy per calendar period (set `u.period` to its name), as bars as wide
// as the period's shortest (so that they never touch).
export function energyChart(element, timeZone, describe) {
  const c = colours();
  const length = (u) => PERIODS[u.period].shortest / SECOND;
  const u = timeChart(element, timeZone, 180, {
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(0.01, (max || 0) * 1.1)] } },
    series: [
      {},
      {
        label: "kWh", stroke: c.energy, fill: c.energy, width: 0, points: { show: false },
        paths: uPlot.paths.bars({
          size: [1, Infinity, 1],
          disp: {
            x0: { unit: 1, values: (u) => u.data[0].map((x) => x + length(u) * 0.06) },
            size: { unit: 1, values: (u) => [length(u) * 0.88] },
          },
        }),
      },
    ],
    axes: axes(c, ""),
    plugins: [tooltip(describe)],
  }, [[], []]);
  u.period = "hour";
  return u;
}
