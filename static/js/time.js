// Times and numbers as people read them, in the meter's time zone.

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
  const s = ms / 1000;
  if (s < 60) return `${number(s, s < 10 ? 1 : 0, true)} s`;
  const m = s / 60;
  if (m < 60) return `${number(m, 0)} min`;
  const h = m / 60;
  if (h < 48) return `${number(h, h < 10 ? 1 : 0, true)} h`;
  return `${number(h / 24, 1, true)} days`;
}
