// The page's calls to blipserver's /api/v1, by relative URL so that the page
// works unchanged behind a reverse proxy under any path prefix.

import { outagesOf } from "./gaps.js";
import { periodFor } from "./time.js";

export class ApiError extends Error {}

// The server (or the proxy in front of it) cannot be reached: one calm
// message, whichever request found out.
export class Unreachable extends ApiError {
  constructor() {
    super("server unreachable, retrying…");
  }
}

export async function getJSON(path) {
  let answer;
  try {
    answer = await fetch(path, { headers: { accept: "application/json" } });
  } catch {
    throw new Unreachable();
  }
  if (!answer.ok) {
    let why = null;
    try {
      why = (await answer.json()).error || null;
    } catch {
      // not blipserver's JSON: a proxy's page
    }
    // A proxy answering for a server that is away, or the server itself
    // without its database.
    if (answer.status >= 500) throw why ? new ApiError(`${why}; retrying…`) : new Unreachable();
    throw new ApiError(`${path.split("?")[0]}: ${answer.status} ${why || answer.statusText}`);
  }
  return answer.json();
}

export function meters() {
  return getJSON("api/v1/meters").then((body) => body.meters);
}

export function meter(id) {
  return getJSON(`api/v1/meters/${id}`);
}

// A time for a query: unix ms as a whole number, or an ISO 8601 text (local
// to the meter when it has no offset).
function time(value) {
  return typeof value === "number" ? String(Math.round(value)) : value;
}

export function power(meter, from, to, maxPoints) {
  const query = new URLSearchParams({
    from: time(from), to: time(to), max_points: Math.max(10, Math.round(maxPoints)),
  });
  return getJSON(`api/v1/meters/${meter}/power?${query}`);
}

export function energy(meter, from, to, period) {
  const query = new URLSearchParams({ from: time(from), to: time(to), period });
  return getJSON(`api/v1/meters/${meter}/energy?${query}`);
}

// The energy and cost of [from, to), asked for in periods coarse enough
// that the answer is a row or two.
export async function total(meter, from, to) {
  return (await energy(meter, from, to, periodFor(from, to, 1))).total;
}

// The stretches when the logger was down (see outagesOf).
export async function outages(meter, from, to) {
  const query = new URLSearchParams({ from: time(from), to: time(to) });
  const answer = await getJSON(`api/v1/meters/${meter}/gaps?${query}`);
  return outagesOf(answer.gaps);
}
