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

export function dateTime(ms, timeZone) {
  return format(timeZone, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  }).format(ms);
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

const numbers = new Map();

export function number(value, digits = 0) {
  if (!numbers.has(digits)) {
    numbers.set(digits, new Intl.NumberFormat(undefined, {
      minimumFractionDigits: digits, maximumFractionDigits: digits,
    }));
  }
  return numbers.get(digits).format(value);
}

export function watts(value) {
  return number(value, value < 10 ? 1 : 0);
}

export function duration(ms) {
  const s = ms / 1000;
  if (s < 60) return `${number(s, s < 10 ? 1 : 0)} s`;
  const m = s / 60;
  if (m < 60) return `${number(m, 0)} min`;
  const h = m / 60;
  if (h < 48) return `${number(h, 1)} h`;
  return `${number(h / 24, 1)} days`;
}
