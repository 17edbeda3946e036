// The page's calls to blipserver's /api/v1, by relative URL so that the page
// works unchanged behind a reverse proxy under any path prefix.

export class ApiError extends Error {}

export async function getJSON(path) {
  let answer;
  try {
    answer = await fetch(path, { headers: { accept: "application/json" } });
  } catch (error) {
    throw new ApiError(`cannot reach the server (${error.message})`);
  }
  if (!answer.ok) {
    let why = answer.statusText;
    try {
      why = (await answer.json()).error || why;
    } catch (ignored) {
      // not JSON: keep the status text
    }
    throw new ApiError(`${path.split("?")[0]}: ${answer.status} ${why}`);
  }
  return answer.json();
}

export function meters() {
  return getJSON("api/v1/meters").then((body) => body.meters);
}

// A time for a query: unix ms as a whole number, or an ISO 8601 text.
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
