// The page's lengths of time (every time constant of the page is here),
// the choice of a calendar period for a range, and times and numbers as
// people read them, in the meter's time zone.

export const SECOND = 1000;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;
export const WEEK = 7 * DAY;

// How far back the live chart reaches.
export const LIVE_WINDOW = 20 * MINUTE;
// How often the live view moves its window along and judges whether the
// meter has gone quiet.
export const TICK = SECOND;
// A meter has gone quiet when nothing came for three of its last
// intervals between blips, and at least this long.
export const QUIET = MINUTE;
// A blip this long after the one before may end an outage.
export const LONG_BLIP = 2 * MINUTE;
// How often a view on show looks whether what it shows is due to be
// loaded again, and how old each may let it grow.
export const LOOK = MINUTE;
export const REFRESH = { summary: 5 * MINUTE, overview: 5 * MINUTE, heatmap: 10 * MINUTE };

// The wait before trying again after a failure: a second at first, twice
// the `previous` wait after that, at most half a minute.
export function backoff(previous = 0) {
  return previous ? Math.min(2 * previous, 30 * SECOND) : SECOND;
}

// The start of the minute of an instant (unix ms), as the server counts
// energy.
export function wholeMinute(ms) {
  return Math.floor(ms / MINUTE) * MINUTE;
}

// The calendar periods the server sums energy by, finest first, each with
// the shortest and the longest it can be (a day of 23 or 25 hours where
// clocks change, a month of 28 to 31 days).
export const PERIODS = {
  hour: { shortest: HOUR, longest: HOUR },
  day: { shortest: DAY - HOUR, longest: DAY + HOUR },
  week: { shortest: WEEK - HOUR, longest: WEEK + HOUR },
  month: { shortest: 28 * DAY - HOUR, longest: 31 * DAY + HOUR },
  year: { shortest: 365 * DAY, longest: 366 * DAY },
};

// The finest calendar period whose rows the range [from, to) spans at
// most `most` of (so `most + 1` at most, the first and last partial).
// Times are unix ms, or ISO texts local to the meter, whose span is read
// near enough in the browser's zone.
export function periodFor(from, to, most) {
  const span = instant(to) - instant(from);
  const names = Object.keys(PERIODS);
  return names.find((name) => span <= most * PERIODS[name].longest) ?? names[names.length - 1];
}

function instant(time) {
  return typeof time === "number" ? time : Date.parse(time);
}

// Midnight starting a day or its month, given as YYYY-MM-DD, local to the
// meter (as the API reads a time without an offset).
export function dayStart(date) {
  return `${date}T00:00`;
}

export function monthStart(date) {
  return `${date.slice(0, 8)}01T00:00`;
}

const formats = new Map();

function format(timeZone, options) {
  const key = timeZone + JSON.stringify(options);
  if (!formats.has(key)) {
    formats.set(key, new Intl.DateTimeFormat(undefined, { timeZone, ...options }));
  }
  return formats.get(key);
}

export function clock(ms, timeZone) {
  return format(timeZone, { hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(ms);
}

export function dateTime(ms, timeZone, seconds = false) {
  return format(timeZone, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    ...(seconds ? { second: "2-digit" } : {}),
  }).format(ms);
}

export function dayLabel(ms, timeZone) {
  return format(timeZone, { weekday: "short", month: "short", day: "numeric" }).format(ms);
}

export function hourLabel(hour) {
  return `${String(hour).padStart(2, "0")}:00`;
}

export function date(ms, timeZone) {
  return format(timeZone, { year: "numeric", month: "short", day: "numeric" }).format(ms);
}

export function periodLabel(ms, period, timeZone) {
  switch (period) {
    case "hour":
      return format(timeZone, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }).format(ms);
    case "month":
      return format(timeZone, { year: "numeric", month: "long" }).format(ms);
    case "year":
      return format(timeZone, { year: "numeric" }).format(ms);
    case "week":
      return `week of ${date(ms, timeZone)}`;
    default:
      return format(timeZone, { weekday: "short", year: "numeric", month: "short", day: "numeric" }).format(ms);
  }
}

// The calendar date (YYYY-MM-DD) of an instant in a time zone, as a date
// input wants it.
export function isoDate(ms, timeZone) {
  const parts = Object.fromEntries(
    format(timeZone, { year: "numeric", month: "2-digit", day: "2-digit" })
      .formatToParts(ms).map((p) => [p.type, p.value]),
  );
  return `${parts.year}-${parts.month}-${parts.day}`;
}

// Parts read by the page itself: fixed locale and digits.
const parts = new Map();
const WEEKDAYS = { Mon: 1, Tue: 2, Wed: 3, Thu: 4, Fri: 5, Sat: 6, Sun: 7 };

// The calendar date (YYYY-MM-DD), hour (0-23), ISO weekday (Monday 1) and
// time (HH:MM) of an instant in a time zone.
export function local(ms, timeZone) {
  if (!parts.has(timeZone)) {
    parts.set(timeZone, new Intl.DateTimeFormat("en-US-u-nu-latn", {
      timeZone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", hourCycle: "h23", weekday: "short",
    }));
  }
  const p = Object.fromEntries(parts.get(timeZone).formatToParts(ms).map((x) => [x.type, x.value]));
  const hour = Number(p.hour) % 24;
  return {
    date: `${p.year}-${p.month}-${p.day}`, hour, weekday: WEEKDAYS[p.weekday],
    time: `${String(hour).padStart(2, "0")}:${p.minute}`,
  };
}

// The calendar date `days` after a YYYY-MM-DD date.
export function addDays(date, days) {
  const [y, m, d] = date.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

// The same calendar date `years` later (28 February for a 29th that is not).
export function addYears(date, years) {
  const [y, m, d] = date.split("-").map(Number);
  const day = Math.min(d, new Date(Date.UTC(y + years, m, 0)).getUTCDate());
  return `${y + years}-${String(m).padStart(2, "0")}-${String(day).padStart(2, "0")}`;
}

const numbers = new Map();

// A number with `digits` decimals, or up to `digits` with `trim`.
export function number(value, digits = 0, trim = false) {
  const key = `${digits}${trim}`;
  if (!numbers.has(key)) {
    numbers.set(key, new Intl.NumberFormat(undefined, {
      minimumFractionDigits: trim ? 0 : digits, maximumFractionDigits: digits,
    }));
  }
  return numbers.get(key).format(value);
}

// kWh with as many decimals as its size deserves.
export function kwh(value) {
  return number(value, value < 100 ? 2 : 0);
}

export function watts(value) {
  return number(value, value < 10 ? 1 : 0);
}

export function duration(ms) {
  if (ms < MINUTE) return `${number(ms / SECOND, ms < 10 * SECOND ? 1 : 0, true)} s`;
  if (ms < HOUR) return `${number(ms / MINUTE, 0)} min`;
  if (ms < 2 * DAY) return `${number(ms / HOUR, ms < 10 * HOUR ? 1 : 0, true)} h`;
  return `${number(ms / DAY, 1, true)} days`;
}
