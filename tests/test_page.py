"""
The power page in a real headless Chromium, against ``twistd -n blip`` fed
through a pty, with a year of history in the database: the live graph
moves on every blip, the history zooms, pans and resets and shows where
the logger was down, the summary, overview and heatmap match the
database, and the page works on a phone and behind a reverse proxy under a
path prefix. Its scripts pass ESLint.

Screenshots are saved in ``$BLIP_ARTIFACTS`` (by default
``test-artifacts/`` in the repository).
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg2
import pytest
from playwright.sync_api import expect

from tests.conftest import ROOT, TIMEOUT, free_port

expect.set_options(timeout=TIMEOUT * 1000)

HOUR = 3_600_000
DAY = 24 * HOUR
ZONE = ZoneInfo("Europe/Copenhagen")
METERS = """
[[meter]]
id = 1
label = "House"
pulses_per_kwh = 1000
price_per_kwh = 2.5
currency = "kr"
timezone = "Europe/Copenhagen"

[[meter]]
id = 2
label = "Workshop"
pulses_per_kwh = 600
multiplier = 4
timezone = "Europe/Copenhagen"
"""


def chromium_path() -> str:
    """
    :return: the Chromium to drive; the tests fail, saying how to get one,
        when there is none.
    """
    for candidate in (os.environ.get("BLIP_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)  # type: ignore[return-value]
    pytest.fail(
        "the page tests need Chromium: `make test` installs Debian's chromium package"
        " when it runs as root; otherwise install it (apt install chromium) or set"
        " BLIP_CHROMIUM to a Chromium or Chrome binary",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """
    A headless Chromium driven by Playwright, one for the whole run (for
    each worker of a parallel run, whose tests of the page come between
    others').
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def fill_history(dsn: str, now_ms: int) -> dict[str, tuple[int, int]]:
    """
    A year and a bit of history: meter 1 blinks every 5 minutes at night
    and every minute by day (in UTC), meter 2 every 10 minutes; the logger
    was down from 10 to 7 hours ago (no blips, no ingest period), and
    meter 1 was idle (listened to, silent) from 5 to 4 hours ago, its next
    blip an hour after the one before. The logger was down from 14 to 12
    hours ago too, but a peer's points repaired that stretch: meter 1's
    blips are there, with a silence of an hour in the middle (``quiet``).

    :return: the ``down``, ``idle``, ``repaired`` and ``quiet`` stretches,
        unix ms.
    """
    minute = now_ms - now_ms % 60_000
    down = (minute - 10 * HOUR, minute - 7 * HOUR)
    idle = (minute - 5 * HOUR, minute - 4 * HOUR)
    repaired = (minute - 14 * HOUR, minute - 12 * HOUR)
    quiet = (repaired[0] + HOUR // 2, repaired[1] - HOUR // 2)
    last = None
    rows = io.StringIO()
    start = now_ms - 400 * DAY
    start -= start % 60_000
    stamp = start
    while stamp < now_ms - 60_000:
        hour = (stamp // HOUR) % 24
        ms = 60_000 if 7 <= hour < 22 else 300_000
        if stamp == idle[1]:
            rows.write(f"1\t{stamp}\t{HOUR}\n")
        elif quiet[0] <= stamp < quiet[1]:
            pass
        elif last is not None and last < quiet[0] <= quiet[1] <= stamp < repaired[1]:
            rows.write(f"1\t{stamp}\t{stamp - last}\n")
        elif not (down[0] <= stamp < down[1] or idle[0] <= stamp < idle[1]):
            rows.write(f"1\t{stamp}\t{ms}\n")
        if not quiet[0] <= stamp < quiet[1]:
            last = stamp
        stamp += ms
    for stamp in range(start, now_ms - 600_000, 600_000):
        if not down[0] <= stamp < down[1]:
            rows.write(f"2\t{stamp}\t600000\n")
    rows.seek(0)
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.copy_expert("COPY readings (id, stamp, ms) FROM STDIN", rows)
            cursor.executemany(
                "INSERT INTO ingest_periods (node, started, alive_at, ended, end_reason)"
                " VALUES ('history', %s, %s, %s, %s)",
                [
                    (start, repaired[0], repaired[0], "stop"),
                    (repaired[1], down[0], down[0], "device lost"),
                    (down[1], now_ms, now_ms, "stop"),
                ],
            )
            cursor.execute(
                "INSERT INTO repairs (meter, started, ended, peer, points, repaired)"
                " SELECT 1, %s, %s, 'http://peer.example', count(*), %s FROM readings"
                "  WHERE id = 1 AND stamp >= %s AND stamp < %s",
                (*repaired, now_ms, *repaired),
            )
    finally:
        connection.close()
    return {"down": down, "idle": idle, "repaired": repaired, "quiet": quiet}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """
    Where screenshots are kept after the tests: ``$BLIP_ARTIFACTS``, or
    ``test-artifacts/`` in the repository.
    """
    path = Path(os.environ.get("BLIP_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def site(start_daemon, pty_meter, database, tmp_path) -> Iterator[dict]:
    """
    The daemon with two meters, a year of history, and the pty; the
    history is written after the schema exists, before the page loads.
    """
    meters = tmp_path / "meters.toml"
    meters.write_text(METERS)
    daemon = start_daemon("--serial", pty_meter.path, "--db", database.dsn, "--meters", str(meters))
    daemon.wait_for("database ready")
    daemon.wait_for("reading serial device")
    stretches = fill_history(database.dsn, int(time.time() * 1000))
    pty_meter.write(b"partial\n")
    yield {"daemon": daemon, "pty": pty_meter, "database": database, **stretches}


def open_page(
    browser, url: str, width: int, height: int, scheme: str = "light", watch: bool = False
):
    """
    :param watch: whether to keep count of what the page keeps running
        (see :data:`WATCH`).
    :return: a page at ``url`` once the first meter's history is drawn;
        ``page.errors`` collects its errors and ``page.requests`` the URLs
        it asked for.
    """
    context = browser.new_context(
        viewport={"width": width, "height": height}, locale="en-US", color_scheme=scheme
    )
    page = context.new_page()
    if watch:
        page.add_init_script(WATCH)
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    try:
        expect(page.get_by_text(RANGE)).to_be_visible()
    except AssertionError:
        pytest.fail(f"the page was not drawn; its errors: {errors}")
    page.errors = errors  # type: ignore[attr-defined]
    page.requests = requests  # type: ignore[attr-defined]
    return page


def meter_view(page, name: str = "House"):
    """:return: the views of the meter called ``name`` (a region so named)."""
    return page.get_by_role("region", name=name, exact=True)


def blip_until_shown(page, pty, line: bytes, expected_watts: str, meter: str = "House") -> None:
    """
    Write blips until the view of ``meter`` shows ``expected_watts`` as its
    power now (the live stream may connect a moment after the page is
    drawn).
    """
    deadline = time.monotonic() + TIMEOUT
    now = meter_view(page, meter).get_by_text(f"{expected_watts} W", exact=True)
    while not now.is_visible():
        assert time.monotonic() < deadline, f"the page does not show {expected_watts} W"
        pty.write(line)
        page.wait_for_timeout(200)


def local_ms(day: datetime, hour: int = 0) -> int:
    """:return: unix ms of ``hour`` o'clock on ``day``'s date in the meters' zone."""
    moment = datetime(day.year, day.month, day.day, hour, tzinfo=ZONE)
    return int(moment.timestamp() * 1000)


def blips(database, meter: int, first: int, last: int) -> int:
    """:return: the blips of ``meter`` in ``[first, last)``, counted in the database."""
    return database.sql(
        "SELECT count(*) FROM readings WHERE id = %s AND stamp >= %s AND stamp < %s",
        (meter, first, last),
    )[0][0]


def number(text: str) -> float:
    """:return: a number as the page writes it in en-US (``1,234.5``)."""
    return float(text.replace(",", ""))


def assert_shows(text: str, value: float, digits: int) -> None:
    """
    ``text`` is ``value`` as the page writes it, with ``digits`` decimals
    (either way at a tie).
    """
    assert re.fullmatch(r"[\d,]+" + (r"\.\d{%d}" % digits if digits else ""), text), text
    assert abs(number(text) - value) <= 0.5 * 10**-digits + 1e-9, (text, value)


def kwh_digits(value: float) -> int:
    """:return: the decimals the page gives an energy of ``value`` kWh."""
    return 2 if value < 100 else 0


# The history's range, as its label says it, to the minute, and its
# resolution.
RANGE = re.compile(r"^(.+) – (.+) · (every blip|one value per .+)$")


def shown_range(view) -> tuple[int, int, str]:
    """
    :return: the range the history of ``view`` shows (unix ms, to the
        minute, as its label says in the meter's zone) and its resolution.
    """
    text = view.get_by_text(RANGE).text_content().replace("\u202f", " ")
    first, last, resolution = RANGE.match(text).groups()  # type: ignore[union-attr]

    def ms(shown: str) -> int:
        moment = datetime.strptime(shown, "%b %d, %Y, %I:%M %p").replace(tzinfo=ZONE)
        return int(moment.timestamp() * 1000)

    return ms(first), ms(last), resolution


def range_after(view, action) -> tuple[int, int, str]:
    """:return: the history's range once ``action()`` has changed it."""
    label = view.get_by_text(RANGE)
    before = label.text_content()
    action()
    expect(label).not_to_have_text(before)
    return shown_range(view)


def plot_pixels(figure, at: float, down: bool = True) -> list[list[int]]:
    """
    :param at: where across (``down``) or down the plot, a share of it.
    :return: the RGB of each pixel down (or across) the plot area of the
        chart in ``figure``, as a person sees it on the light page (its
        canvas over white).
    """
    return figure.evaluate(
        """(figure, [at, down]) => {
            const over = figure.querySelector('.u-over').getBoundingClientRect();
            const canvas = figure.querySelector('canvas');
            const frame = canvas.getBoundingClientRect();
            const ratio = canvas.width / frame.width;
            const left = Math.round((over.left - frame.left) * ratio);
            const top = Math.round((over.top - frame.top) * ratio);
            const width = Math.round(over.width * ratio);
            const height = Math.round(over.height * ratio);
            const context = canvas.getContext('2d');
            const data = down
                ? context.getImageData(left + Math.round(at * (width - 1)), top, 1, height).data
                : context.getImageData(left, top + Math.round(at * (height - 1)), width, 1).data;
            const out = [];
            for (let i = 0; i < data.length; i += 4) {
                const alpha = data[i + 3] / 255;
                out.push([0, 1, 2].map((k) => Math.round(data[i + k] * alpha + 255 * (1 - alpha))));
            }
            return out;
        }""",
        [at, down],
    )


def line_pixels(colours: list[list[int]]) -> int:
    """:return: how many pixels have the power line's colour (light scheme)."""
    return sum(1 for r, g, b in colours if r > 150 and g < 140 and b < 100)


# The logger-down band over white (light scheme).
SHADE = (229, 231, 234)


def shaded(colours: list[list[int]]) -> bool:
    """:return: whether most of a column has the logger-down band's shade."""
    shade = sum(1 for c in colours if all(abs(a - b) <= 6 for a, b in zip(c, SHADE)))
    return shade > len(colours) / 2


def bars(colours: list[list[int]]) -> int:
    """:return: how many runs of the energy bars' colour (light scheme) a row crosses."""
    runs = 0
    inside = False
    for r, g, b in colours:
        bar = abs(r - 0x1C) < 40 and abs(g - 0x7E) < 40 and abs(b - 0xD6) < 40
        runs += bar and not inside
        inside = bar
    return runs


# Run in the page before its scripts: keeps count of what they keep
# running, through the browser's own functions (intervals and pending
# timeouts with the stack that started each, the elements ResizeObservers
# watch, the EventSources not closed).
WATCH = """
(() => {
  const running = { timers: new Map(), observers: new Set(), streams: new Set() };
  Object.defineProperty(window, "__running", { value: running });
  const { setInterval, clearInterval, setTimeout, clearTimeout } = window;
  window.setInterval = (handler, ms, ...rest) => {
    const id = setInterval(handler, ms, ...rest);
    running.timers.set(id, new Error().stack);
    return id;
  };
  window.setTimeout = (handler, ms, ...rest) => {
    const id = setTimeout((...args) => {
      running.timers.delete(id);
      return typeof handler === "function" ? handler(...args) : undefined;
    }, ms, ...rest);
    running.timers.set(id, new Error().stack);
    return id;
  };
  window.clearInterval = window.clearTimeout = (id) => {
    running.timers.delete(id);
    clearInterval(id);
    clearTimeout(id);
  };
  window.ResizeObserver = class extends ResizeObserver {
    constructor(callback) {
      super(callback);
      this.targets = new Set();
      running.observers.add(this);
    }
    observe(target, options) { this.targets.add(target); super.observe(target, options); }
    unobserve(target) { this.targets.delete(target); super.unobserve(target); }
    disconnect() { this.targets.clear(); super.disconnect(); }
  };
  window.EventSource = class extends EventSource {
    constructor(...args) { super(...args); running.streams.add(this); }
    close() { running.streams.delete(this); super.close(); }
  };
})();
"""

# What the page's own scripts keep running now (not the test's scripts):
# each timer named by the calls in the page's modules that started it.
RUNNING = """() => {
  const running = window.__running;
  const where = (stack) => {
    const calls = stack.split("\\n").map((line) => line.trim())
      .filter((line) => /\\/(app|js\\/\\w+)\\.js:/.test(line));
    const modules = calls.filter((line) => !/\\/app\\.js:/.test(line));
    return (modules.length ? modules : calls).map((line) => line.replace(/http.*\\//, "")).join(" < ");
  };
  const observed = [...running.observers].flatMap((o) => [...o.targets]);
  return {
    timers: [...running.timers.values()].map(where).filter(Boolean),
    observed: observed.length,
    observedHidden: observed.filter((target) => !target.checkVisibility()).length,
    streams: running.streams.size,
  };
}"""


def set_hidden(page, hidden: bool) -> None:
    """
    The page is hidden (another tab, a phone's screen off) or shown again,
    as the browser tells it: ``document.visibilityState`` and a
    ``visibilitychange`` event.
    """
    page.evaluate(
        """hidden => {
            Object.defineProperty(document, 'visibilityState', {
                value: hidden ? 'hidden' : 'visible', configurable: true,
            });
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        hidden,
    )


def test_views_that_go_away_leave_nothing_running(browser, site) -> None:
    """
    Only what is on show keeps timers and observers running: after the
    meters, the history's views and its zoom are switched back and forth,
    each kind of timer runs once (for the meter on show, not once per meter
    ever shown), no more than before, no hidden element is watched for its
    size, and one live stream is open. While the page is hidden nothing
    runs at all, and when it is shown again the same comes back, live.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900, watch=True)
    before = page.evaluate(RUNNING)
    tabs = page.get_by_role("navigation", name="Meters").get_by_role("button")
    for _ in range(3):
        for meter in (1, 0):
            tabs.nth(meter).click()
            for name in ("Week", "Month", "Year", "Zoom in", "Zoom out", "Day"):
                page.get_by_role("button", name=name, exact=True).click()
    after = page.evaluate(RUNNING)
    assert len(set(after["timers"])) == len(after["timers"]), after["timers"]
    assert len(after["timers"]) == len(before["timers"]), (before["timers"], after["timers"])
    assert after["observed"] == before["observed"] > 0
    assert after["observedHidden"] == 0
    assert after["streams"] == 1
    set_hidden(page, True)
    assert page.evaluate(RUNNING) == {"timers": [], "observed": 0, "observedHidden": 0, "streams": 0}
    set_hidden(page, False)
    expect(page.get_by_text("live", exact=True)).to_be_visible()
    shown = page.evaluate(RUNNING)
    assert sorted(shown["timers"]) == sorted(after["timers"])
    assert shown["observed"] == after["observed"] and shown["observedHidden"] == 0
    assert shown["streams"] == 1
    assert page.errors == []  # type: ignore[attr-defined]


def clock_time(text: str) -> datetime:
    """:return: the time of day a tooltip starts with (``10:15:03 AM: ...``)."""
    return datetime.strptime(text.replace("\u202f", " ").split(": ")[0], "%I:%M:%S %p")


def test_live_view_moves_on_every_blip(browser, site, artifacts) -> None:
    """
    On a desktop screen the live view shows each blip as it arrives: the
    power, the time of the last blip, and one more point on the chart, the
    newest at its right end; the points loaded with the page have their
    own times in the tooltip.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    house = meter_view(page)
    blip_until_shown(page, site["pty"], b"1 1000\n", "3,600")
    site["pty"].write(b"1 2000\n")
    expect(house.get_by_text("1,800 W", exact=True)).to_be_visible()
    expect(house.get_by_text(re.compile("^last blip .+ after the one before$"))).to_be_visible()
    expect(page.get_by_text("live", exact=True)).to_be_visible()
    chart = house.get_by_role("figure", name="Last 20 minutes, W")
    tip = chart.get_by_role("tooltip")
    box = chart.locator(".u-over").bounding_box()
    # The newest point, at the right end: the blip just written.
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
    expect(tip).to_have_text(re.compile(": 1,800 W$"))
    now = datetime.now(ZONE)
    shown = clock_time(tip.text_content())
    seconds = (now.hour * 3600 + now.minute * 60 + now.second) - (
        shown.hour * 3600 + shown.minute * 60 + shown.second
    )
    assert 0 <= seconds % 86400 <= 30, tip.text_content()
    # A point of history loaded at the start, a third of the way along.
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
    expect(tip).not_to_have_text(re.compile(": 1,800 W$"))
    shown = clock_time(tip.text_content())
    minutes = (now.hour * 60 + now.minute - shown.hour * 60 - shown.minute) % (24 * 60)
    assert 3 <= minutes <= 17, tip.text_content()
    page.screenshot(path=str(artifacts / "live.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]


def test_meters_are_named_and_each_has_its_view(browser, site) -> None:
    """
    Both configured meters have a tab with their label; choosing one shows
    its view, its power computed from its own pulses and multiplier.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    tabs = page.get_by_role("navigation", name="Meters").get_by_role("button")
    expect(tabs).to_have_count(2)
    expect(tabs.nth(0)).to_contain_text("House")
    expect(tabs.nth(0)).to_have_attribute("aria-pressed", "true")
    expect(meter_view(page, "House")).to_be_visible()
    tabs.nth(1).click()
    expect(tabs.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(meter_view(page, "Workshop")).to_be_visible()
    expect(meter_view(page, "House")).to_be_hidden()
    # 600 pulses/kWh behind a x4 transformer: 3.6e9 * 4 / (600 * 6000) = 4000 W.
    blip_until_shown(page, site["pty"], b"2 6000\n", "4,000", meter="Workshop")
    assert page.errors == []  # type: ignore[attr-defined]


def test_history_zooms_pans_and_resets(browser, site, artifacts) -> None:
    """
    Dragging across the power chart zooms in (and fetches finer data), the
    zoom and pan buttons move the range, double-click goes back to the
    view; the day is drawn from every blip or minute, and the week, month
    and year views cover their spans in at most a few thousand rows, with
    the energy per hour for a day, per day for a week or month, and a bar
    per month for a year.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    house = meter_view(page)
    power = house.get_by_role("figure", name=re.compile("^Power, W"))
    whole = shown_range(house)
    whole_text = house.get_by_text(RANGE).text_content()
    assert abs((whole[1] - whole[0]) - DAY) <= 60_000
    assert whole[2] in ("every blip", "one value per 1 min")
    expect(house.get_by_role("figure", name="Energy, kWh per hour")).to_be_visible()
    over = power.locator(".u-over")
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    y = box["y"] + box["height"] / 2

    def drag() -> None:
        page.mouse.move(box["x"] + box["width"] * 0.25, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
        page.mouse.up()

    zoomed = range_after(house, drag)
    assert zoomed[1] - zoomed[0] < (whole[1] - whole[0]) / 2
    assert zoomed[0] > whole[0] and zoomed[1] < whole[1]
    panned = range_after(house, house.get_by_role("button", name="Earlier").click)
    assert panned[0] < zoomed[0]
    narrowed = range_after(house, house.get_by_role("button", name="Zoom in").click)
    assert narrowed[1] - narrowed[0] < (panned[1] - panned[0]) * 0.6
    over.dblclick()
    expect(house.get_by_text(RANGE)).to_have_text(whole_text)
    for view, days, period in (("Week", 7, "day"), ("Month", 30, "day"), ("Year", 365, "month")):
        with page.expect_response(lambda r: "/api/v1/meters/1/power?" in r.url) as answer:
            shown = range_after(house, house.get_by_role("button", name=view, exact=True).click)
        assert abs(shown[1] - shown[0] - days * DAY) < HOUR
        assert 0 < len(answer.value.json()["points"]) <= 4000
        expect(house.get_by_role("figure", name=f"Energy, kWh per {period}")).to_be_visible()
        if view == "Week":
            page.screenshot(path=str(artifacts / "week.png"), full_page=True)
    energy = house.get_by_role("figure", name="Energy, kWh per month")
    energy.scroll_into_view_if_needed()
    # The row of pixels just above the time axis crosses every bar.
    height = energy.locator(".u-over").bounding_box()["height"]
    assert 12 <= bars(plot_pixels(energy, 1 - 2 / height, down=False)) <= 14
    assert page.errors == []  # type: ignore[attr-defined]


def test_history_shows_where_the_logger_was_down(browser, site) -> None:
    """
    Where the logger was down, the history's power chart is shaded, from
    the start of the outage to its end, with no line across it; where the
    meter was merely idle it draws low power, not a gap; where a peer's
    points repaired an outage, it draws them like any data, a silence
    among them (a gap of kind repaired) as low power, with no shade.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    house = meter_view(page)
    power = house.get_by_role("figure", name=re.compile("^Power, W"))
    power.scroll_into_view_if_needed()
    first, last, _ = shown_range(house)
    down, idle = site["down"], site["idle"]
    width = power.locator(".u-over").bounding_box()["width"]

    def columns(at: int) -> list[list[list[int]]]:
        # Three columns 3 px apart: at most one is on a grid line.
        share = (at - first) / (last - first)
        return [plot_pixels(power, share + px / width) for px in (-3, 0, 3)]

    inside = columns((down[0] + down[1]) // 2)
    assert sum(map(line_pixels, inside)) == 0 and any(map(shaded, inside))
    for at in (down[0] + 10 * 60_000, down[1] - 10 * 60_000):
        assert any(map(shaded, columns(at))), at
    # The line is drawn on either side of the outage, through the idle
    # hour, and through the repaired stretch, its silence included, with
    # no shade.
    repaired, quiet = site["repaired"], site["quiet"]
    url = site["daemon"].url(f"/api/v1/meters/1/gaps?from={repaired[0]}&to={repaired[1]}")
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
        gaps = json.load(answer)["gaps"]
    assert [(g["kind"], g["peer"]) for g in gaps] == [("repaired", "http://peer.example")]
    for at in (
        down[0] - 20 * 60_000, down[1] + 20 * 60_000, (idle[0] + idle[1]) // 2,
        repaired[0] + 10 * 60_000, (quiet[0] + quiet[1]) // 2, repaired[1] - 10 * 60_000,
    ):
        around = columns(at)
        assert sum(map(line_pixels, around)) > 0 and not any(map(shaded, around)), at
    assert page.errors == []  # type: ignore[attr-defined]


def energy_asked(page, meter: int) -> dict[int, tuple[int, int]]:
    """
    :return: the ranges of whole minutes (unix ms) the page asked the
        energy of ``meter`` for, by their length; the last of each length.
    """
    asked = {}
    for url in page.requests:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        if parts.path.endswith(f"/api/v1/meters/{meter}/energy") and all(
            query[k][0].isdigit() for k in ("from", "to")
        ):
            first, last = int(query["from"][0]), int(query["to"][0])
            if first % 60_000 == last % 60_000 == 0:
                asked[last - first] = (first, last)
    return asked


def test_summary_matches_the_database(browser, site) -> None:
    """
    The summary's kWh and cost for the rolling ranges are the blips in
    exactly those ranges (as the page asked for them), counted in the
    database, at the meter's price.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    house = meter_view(page)
    rows = house.get_by_role("table").get_by_role("row")
    expect(rows.last.get_by_role("cell").nth(1)).not_to_have_text("…")
    cells = [row.get_by_role("cell").all_text_contents() for row in rows.all()[1:]]
    labels = [row[0] for row in cells]
    assert labels == [
        "Today", "Last 24 hours", "Last 7 days", "This week", "a year earlier",
        "This month", "a year earlier", "Last 365 days",
    ]
    asked = energy_asked(page, 1)
    for label, span in (("Last 24 hours", DAY), ("Last 7 days", 7 * DAY), ("Last 365 days", 365 * DAY)):
        first, last = asked[span]
        assert abs(last - time.time() * 1000) < 5 * 60_000
        kwh = blips(site["database"], 1, first, last) * (1 / 1000)
        _, shown, cost, _ = cells[labels.index(label)]
        assert_shows(shown, kwh, kwh_digits(kwh))
        assert_shows(cost, kwh * 2.5, 2)
    expect(house.get_by_role("columnheader", name="kr")).to_be_visible()
    diffs = [row[3] for row in cells]
    assert [d for d in diffs if d] and all(d.endswith("%") for d in diffs if d)
    assert page.errors == []  # type: ignore[attr-defined]


def today(card) -> tuple[str, str]:
    """:return: the kWh and the cost a card of the overview shows for today."""
    text = card.get_by_text(re.compile("^today ")).text_content()
    match = re.fullmatch(r"today ([\d,.]+) kWh ?(.*)", text.strip())
    assert match, text
    return match[1], match[2]


def test_overview_shows_every_meter_and_the_total(browser, site, artifacts) -> None:
    """
    The overview shows each meter's power now and energy today side by
    side, counting the blips seen live on top of what it was answered, and
    a total equal to their sum computed from what was written and the
    database; on a wall screen the live view, summary and both history
    charts fit on the first screen.
    """
    page = open_page(browser, site["daemon"].url("/"), 1920, 1080, "dark")
    overview = page.get_by_role("region", name="All meters")
    cards = {
        name: overview.get_by_role("article").filter(has=page.get_by_role("heading", name=name))
        for name in ("House", "Workshop", "Total")
    }
    expect(cards["Total"].get_by_text(re.compile(r"^today [\d.]+ kWh"))).to_be_visible()
    blip_until_shown(page, site["pty"], b"1 1000\n", "3,600")
    # Enough blips for the live count to show in the kWh: 0.01 and 0.04.
    site["pty"].write(b"1 1000\n" * 10 + b"2 6000\n" * 6)
    # 3600 W for meter 1, 4000 W for meter 2.
    expect(cards["Total"].get_by_text("7,600 W", exact=True)).to_be_visible()
    midnight = local_ms(datetime.now(ZONE))
    deadline = time.monotonic() + TIMEOUT
    while True:
        now = int(time.time() * 1000) + 60_000
        expected = {
            "House": blips(site["database"], 1, midnight, now) * (1 / 1000),
            "Workshop": blips(site["database"], 2, midnight, now) * (4 / 600),
        }
        expected["Total"] = expected["House"] + expected["Workshop"]
        shown = {name: today(card)[0] for name, card in cards.items()}
        try:
            for name, kwh in expected.items():
                assert_shows(shown[name], kwh, 2)
            break
        except AssertionError:
            assert time.monotonic() < deadline, (shown, expected)
            page.wait_for_timeout(200)
    assert "kr" in today(cards["Total"])[1]
    house = meter_view(page)
    for name in ("Energy, kWh per hour", "Last 20 minutes, W"):
        canvas = house.get_by_role("figure", name=name).locator("canvas")
        assert canvas.bounding_box()["y"] < 1080 - 180
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    page.screenshot(path=str(artifacts / "wall-dark.png"))
    assert page.errors == []  # type: ignore[attr-defined]


def test_heatmap_counts_each_hour(browser, site, artifacts) -> None:
    """
    The heatmap has a cell for each hour of each of the last 56 local days,
    labelled by hour of the day; pointing at a cell of yesterday says which
    hour it is and its kWh, the blips of that local hour counted in the
    database.
    """
    page = open_page(browser, site["daemon"].url("/"), 1920, 1080)
    heat = meter_view(page).locator(
        "section", has=page.get_by_role("heading", name="Last 8 weeks, kWh per hour")
    )
    cells = heat.locator(".cell")
    expect(cells).to_have_count(56 * 24)
    assert heat.get_by_text(re.compile(r"^\d\d:00$")).all_text_contents() == [
        f"{hour:02}:00" for hour in range(0, 24, 3)
    ]
    yesterday = datetime.now(ZONE) - timedelta(days=1)
    day = f"{yesterday:%a}, {yesterday:%b} {yesterday.day}"
    tip = heat.get_by_role("tooltip")
    cells.nth(54 * 24).scroll_into_view_if_needed()
    for hour in range(24):
        cells.nth(54 * 24 + hour).hover()
        expect(tip).to_contain_text(f"{hour:02}:00–{(hour + 1) % 24:02}:00: ")
        when, kwh = tip.text_content().rsplit(": ", 1)
        assert when == f"{day}, {hour:02}:00–{(hour + 1) % 24:02}:00"
        first = local_ms(yesterday, hour)
        expected = blips(site["database"], 1, first, first + HOUR) * (1 / 1000)
        assert kwh.endswith(" kWh")
        assert_shows(kwh.removesuffix(" kWh"), expected, 2)
    assert heat.get_by_text(re.compile(r"^(≥ )?[\d.]+ kWh$")).is_visible()
    heat.screenshot(path=str(artifacts / "heatmap.png"))
    page.screenshot(path=str(artifacts / "wall-light.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]


def test_phone_layout(browser, site, artifacts) -> None:
    """
    On a 360 px phone screen nothing is wider than the screen, the summary's
    figures stay on one line each, the heatmap fits, and the live view and
    history are there, in light and dark.
    """
    for scheme in ("light", "dark"):
        page = open_page(browser, site["daemon"].url("/"), 360, 800, scheme)
        house = meter_view(page)
        blip_until_shown(page, site["pty"], b"1 1200\n", "3,000")
        table = house.get_by_role("table")
        expect(table.get_by_role("row").last.get_by_role("cell").nth(1)).not_to_have_text("…")
        heat = house.locator(
            "section", has=page.get_by_role("heading", name="Last 8 weeks, kWh per hour")
        )
        expect(heat.locator(".cell")).to_have_count(56 * 24)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        power = house.get_by_role("figure", name=re.compile("^Power, W"))
        assert power.locator("canvas").bounding_box()["width"] <= 360
        assert heat.locator(".heat-grid").bounding_box()["width"] <= 360
        heights = table.get_by_role("cell").evaluate_all(
            "(cells) => cells.map((td) => td.getBoundingClientRect().height)"
        )
        assert max(heights) < 2 * min(heights)
        page.screenshot(path=str(artifacts / f"phone-{scheme}.png"), full_page=True)
        assert page.errors == []  # type: ignore[attr-defined]
        page.context.close()


def test_behind_a_reverse_proxy_under_a_prefix(browser, site) -> None:
    """
    Served by a reverse proxy under /power/, the page loads its files and
    data through the prefix and still updates live; when the daemon behind
    the proxy goes away, the page says so in one calm message.
    """
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.proxy", str(port), "power", str(site["daemon"].port)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert "proxy listening" in proxy.stdout.readline()
        page = open_page(browser, f"http://127.0.0.1:{port}/power/", 1024, 768)
        blip_until_shown(page, site["pty"], b"1 1500\n", "2,400")
        range_after(meter_view(page), page.get_by_role("button", name="Week").click)
        requests = page.requests  # type: ignore[attr-defined]
        assert requests and all(f"127.0.0.1:{port}/power/" in url for url in requests)
        assert page.errors == []  # type: ignore[attr-defined]
        site["daemon"].stop()
        page.get_by_role("button", name="Month").click()
        expect(page.get_by_role("alert")).to_have_text("server unreachable, retrying…")
    finally:
        proxy.terminate()
        proxy.wait(TIMEOUT)


def test_page_files_are_served_well(site) -> None:
    """
    The page's files come with their content types, validators and gzip;
    no directory is listed and nothing outside static/ is reachable.
    """
    daemon = site["daemon"]
    request = urllib.request.Request(daemon.url("/vendor/uplot/uPlot.iife.min.js"),
                                     headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert answer.headers["Content-Type"] == "text/javascript"
        etag = answer.headers["ETag"]
        assert answer.headers["Last-Modified"]
    request = urllib.request.Request(daemon.url("/vendor/uplot/uPlot.iife.min.js"),
                                     headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as cached:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert cached.value.code == 304
    for path in ("/vendor/", "/vendor", "/js/", "/../setup.cfg", "/%2e%2e/README.md"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(daemon.url(path), timeout=TIMEOUT)
        assert missing.value.code == 404
        assert json.loads(missing.value.read()) == {"error": "no such route"}
    assert (ROOT / "static" / "vendor" / "uplot" / "LICENSE").is_file()
    assert Path(ROOT / "static" / "index.html").read_text().count("http") == 0


def test_scripts_pass_eslint() -> None:
    """
    The page's own scripts (static/, not the vendored uPlot) pass ESLint's
    recommended rules as eslint.config.js sets them up; the test fails
    with ESLint's report otherwise, and fails saying how to install ESLint
    when it is missing.
    """
    eslint = ROOT / "node_modules" / ".bin" / "eslint"
    if not eslint.exists():
        pytest.fail(
            "ESLint is not installed: `make test` installs it (or run `npm ci`,"
            " which installs the version package-lock.json pins)",
            pytrace=False,
        )
    result = subprocess.run(
        [str(eslint), "--max-warnings=0", "static"],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT * 4,
    )
    if result.returncode != 0:
        pytest.fail(f"ESLint found problems:\n{result.stdout}{result.stderr}", pytrace=False)
