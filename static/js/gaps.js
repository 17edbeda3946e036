// Gaps are gaps: where the logger was down, a chart leaves a labelled band
// and its line and fill stop at the edges, rather than being drawn across
// the outage or down to zero.

import { SECOND } from "./time.js";

// The gaps of /api/v1 a chart shows as outages: where the logger was down.
// The others are drawn like data: where the meter was merely idle (low
// power), where nothing says whether a logger ran (history), and where this
// logger was down but a peer logger's points repaired the stretch (they are
// the meter's points; a silence among them is the meter's too).
export function outagesOf(gaps) {
  return gaps.filter((gap) => gap.kind === "logger_down").map((gap) => ({ from: gap.from, to: gap.to }));
}

// Columns of a uPlot data set (times in s first) with the rows inside an
// outage (times in ms) left out and a row of nulls in the middle of each, so
// that no line or band crosses it. `rows` gives each kept row's index in the
// input, or -1 for the nulls.
export function breakAtOutages(columns, outages) {
  const [xs, ...ys] = columns;
  const out = columns.map(() => []);
  const rows = [];
  const sorted = [...outages].sort((a, b) => a.from - b.from);
  let g = 0;
  const push = (x, i) => {
    out[0].push(x);
    ys.forEach((y, k) => out[k + 1].push(i < 0 ? null : y[i]));
    rows.push(i);
  };
  for (let i = 0; i < xs.length; i++) {
    const ms = xs[i] * SECOND;
    while (g < sorted.length && sorted[g].to <= ms) {
      push(middle(sorted[g]), -1);
      g++;
    }
    if (g < sorted.length && sorted[g].from < ms) continue;
    push(xs[i], i);
  }
  for (; g < sorted.length; g++) push(middle(sorted[g]), -1);
  return { data: out, rows };
}

// The middle of an outage, in s.
function middle(outage) {
  return (outage.from + outage.to) / 2 / SECOND;
}

// A uPlot plugin shading each outage of `outages()` (times in ms) and
// labelling it "logger down".
export function outageBands(outages, colours) {
  return {
    hooks: {
      drawClear: (u) => {
        const { ctx } = u;
        const { left, top, width, height } = u.bbox;
        const ratio = devicePixelRatio || 1;
        ctx.save();
        ctx.beginPath();
        ctx.rect(left, top, width, height);
        ctx.clip();
        ctx.font = `${Math.round(11 * ratio)}px system-ui, sans-serif`;
        ctx.textAlign = "center";
        ctx.textBaseline = "top";
        for (const outage of outages()) {
          const a = Math.max(left, u.valToPos(outage.from / SECOND, "x", true));
          const b = Math.min(left + width, u.valToPos(outage.to / SECOND, "x", true));
          if (b <= a) continue;
          ctx.fillStyle = colours.gap;
          ctx.fillRect(a, top, Math.max(b - a, ratio), height);
          ctx.fillStyle = colours.muted;
          const label = "logger down";
          const room = b - a;
          if (ctx.measureText(label).width + 6 * ratio <= room) {
            ctx.fillText(label, (a + b) / 2, top + 4 * ratio);
          } else if (room >= 12 * ratio) {
            // Too narrow for the words across: up the band instead.
            ctx.save();
            ctx.translate((a + b) / 2, top + 4 * ratio);
            ctx.rotate(Math.PI / 2);
            ctx.textAlign = "left";
            ctx.textBaseline = "middle";
            ctx.fillText(label, 0, 0);
            ctx.restore();
          }
        }
        ctx.restore();
      },
    },
  };
}
