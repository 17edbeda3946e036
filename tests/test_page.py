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
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg2
import pytest
from playwright.sync_api import expect

from tests.conftest import ROOT, TIMEOUT, free_port

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


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """
    A headless Chromium driven by Playwright.
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
    blip an hour after the one before.

    :return: the ``down`` and ``idle`` stretches, unix ms.
    """
    minute = now_ms - now_ms % 60_000
    down = (minute - 10 * HOUR, minute - 7 * HOUR)
    idle = (minute - 5 * HOUR, minute - 4 * HOUR)
    rows = io.StringIO()
    start = now_ms - 400 * DAY
    start -= start % 60_000
    stamp = start
    while stamp < now_ms - 60_000:
        hour = (stamp // HOUR) % 24
        ms = 60_000 if 7 <= hour < 22 else 300_000
        if stamp == idle[1]:
            rows.write(f"1\t{stamp}\t{HOUR}\n")
        elif not (down[0] <= stamp < down[1] or idle[0] <= stamp < idle[1]):
            rows.write(f"1\t{stamp}\t{ms}\n")
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
                [(start, down[0], down[0], "device lost"), (down[1], now_ms, now_ms, "stop")],
            )
    finally:
        connection.close()
    return {"down": down, "idle": idle}


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


def api(daemon, path: str) -> dict:
    """:return: a JSON answer of the daemon."""
    with urllib.request.urlopen(daemon.url(path), timeout=TIMEOUT) as answer:
        return json.loads(answer.read())


def open_page(
    browser, url: str, width: int, height: int, scheme: str = "light", watch: bool = False
):
    """
    :param watch: whether to keep count of what the page keeps running
        (see :data:`WATCH`).
    :return: a page at ``url`` once the first meter's views are drawn.
    """
    context = browser.new_context(
        viewport={"width": width, "height": height}, locale="en-US", color_scheme=scheme
    )
    page = context.new_page()
    if watch:
        page.add_init_script(WATCH)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    try:
        page.wait_for_selector(
            "section.meter:not([hidden]) [data-role=summary] tr", timeout=TIMEOUT * 1000
        )
        page.wait_for_selector(
            "section.meter:not([hidden]) [data-role=power-chart][data-points]", timeout=TIMEOUT * 1000
        )
    except Exception:
        pytest.fail(f"the page was not drawn; its errors: {errors}")
    page.errors = errors  # type: ignore[attr-defined]
    return page


def blip_until_shown(page, pty, line: bytes, expected_watts: str) -> None:
    """
    Write blips until the page shows ``expected_watts`` (the live stream
    may connect a moment after the page is drawn).
    """
    deadline = time.monotonic() + TIMEOUT
    watts = page.locator("section.meter:not([hidden]) [data-role=watts]")
    while watts.text_content() != expected_watts:
        assert time.monotonic() < deadline, f"page shows {watts.text_content()!r}"
        pty.write(line)
        page.wait_for_timeout(200)


def visible(selector: str) -> str:
    """:return: ``selector`` inside the meter on show."""
    return f"section.meter:not([hidden]) {selector}"


def wait_for(page, script: str, arg=None) -> None:
    """Wait until ``script`` (a function of ``arg``) is true in the page."""
    page.wait_for_function(script, arg=arg, timeout=TIMEOUT * 1000)


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
    expect(page.get_by_text("live", exact=True)).to_be_visible(timeout=TIMEOUT * 1000)
    shown = page.evaluate(RUNNING)
    assert sorted(shown["timers"]) == sorted(after["timers"])
    assert shown["observed"] == after["observed"] and shown["observedHidden"] == 0
    assert shown["streams"] == 1
    assert page.errors == []  # type: ignore[attr-defined]


def test_live_view_moves_on_every_blip(browser, site, artifacts) -> None:
    """
    On a desktop screen the live view shows each blip as it arrives: the
    power, the time of the last blip, and one more point on the chart; the
    points loaded with the page have their own times in the tooltip.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    blip_until_shown(page, site["pty"], b"1 1000\n", "3,600")
    chart = page.locator(visible("[data-role=live-chart]"))
    before = int(chart.get_attribute("data-points"))
    site["pty"].write(b"1 2000\n")
    live = visible("[data-role=live-chart]")
    wait_for(page, f"n => document.querySelector('{live}').dataset.points > n", before)
    assert page.locator(visible("[data-role=watts]")).text_content() == "1,800"
    assert "last blip" in page.locator(visible("[data-role=last]")).text_content()
    assert page.locator("#connection").get_attribute("data-state") == "live"
    # A point of history loaded at the start, a third of the way along.
    box = page.locator(visible("[data-role=live-chart] .u-over")).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
    tip = page.locator(visible("[data-role=live-chart] .tooltip"))
    tip.wait_for(state="visible", timeout=TIMEOUT * 1000)
    shown = datetime.strptime(tip.text_content().split(": ")[0], "%I:%M:%S %p")
    now = datetime.now(ZONE)
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
    tabs = page.locator("nav#meters button")
    assert page.locator("nav#meters").is_visible()
    assert tabs.count() == 2
    assert "House" in tabs.nth(0).text_content()
    tabs.nth(1).click()
    assert page.locator("#meter-2").is_visible()
    assert not page.locator("#meter-1").is_visible()
    # 600 pulses/kWh behind a x4 transformer: 3.6e9 * 4 / (600 * 6000) = 4000 W.
    blip_until_shown(page, site["pty"], b"2 6000\n", "4,000")
    assert page.errors == []  # type: ignore[attr-defined]


def test_history_zooms_pans_and_resets(browser, site, artifacts) -> None:
    """
    Dragging across the power chart zooms in (and fetches finer data), the
    zoom and pan buttons move the range, double-click goes back to the
    view; the day is drawn from every blip or minute, and the week, month
    and year views cover their spans in at most a few thousand rows.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    chart = page.locator("#meter-1 [data-role=power-chart]")
    script = (
        "f => {{ const c = document.querySelector('#meter-1 [data-role=power-chart]');"
        " return {}; }}"
    )

    def span() -> tuple[int, int]:
        return int(chart.get_attribute("data-from")), int(chart.get_attribute("data-to"))

    whole = span()
    assert abs((whole[1] - whole[0]) - DAY) < 60_000
    assert int(chart.get_attribute("data-resolution")) in (0, 60_000)
    over = page.locator("#meter-1 [data-role=power-chart] .u-over")
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    wait_for(page, script.format("c.dataset.to - c.dataset.from < f / 2"), whole[1] - whole[0])
    zoomed = span()
    assert zoomed[0] > whole[0] and zoomed[1] < whole[1]
    page.locator("#meter-1 [data-pan='-1']").click()
    wait_for(page, script.format("c.dataset.from < f"), zoomed[0])
    panned = span()
    page.locator("#meter-1 [data-zoom='1']").click()
    wait_for(page, script.format("c.dataset.to - c.dataset.from < f * 0.6"), panned[1] - panned[0])
    page.locator("#meter-1 [data-role=power-chart] .u-over").dblclick()
    wait_for(page, script.format("c.dataset.from == f"), whole[0])
    for view, days in (("week", 7), ("month", 30), ("year", 365)):
        page.locator(f"#meter-1 [data-view={view}]").click()
        spans = "Math.abs(c.dataset.to - c.dataset.from - f * 86400000) < 3600000"
        wait_for(page, script.format(spans), days)
        points = int(chart.get_attribute("data-points"))
        assert 0 < points <= 4000
        if view == "week":
            page.screenshot(path=str(artifacts / "week.png"), full_page=True)
    bars = int(page.locator("#meter-1 [data-role=energy-chart]").get_attribute("data-bars"))
    assert 12 <= bars <= 14
    assert page.errors == []  # type: ignore[attr-defined]


def column_colours(page, selector: str, at: int) -> list[list[int]]:
    """
    :return: the RGB of each pixel down a chart's canvas at time ``at``
        (unix ms) on its time axis.
    """
    return page.evaluate(
        """([selector, at]) => {
            const box = document.querySelector(selector);
            const over = box.querySelector('.u-over').getBoundingClientRect();
            const canvas = box.querySelector('canvas');
            const frame = canvas.getBoundingClientRect();
            const share = (at - box.dataset.from) / (box.dataset.to - box.dataset.from);
            const ratio = canvas.width / frame.width;
            const x = Math.round((over.left - frame.left + share * over.width) * ratio);
            const top = Math.round((over.top - frame.top) * ratio);
            const height = Math.round(over.height * ratio);
            const data = canvas.getContext('2d').getImageData(x, top, 1, height).data;
            const out = [];
            for (let i = 0; i < data.length; i += 4) out.push([data[i], data[i + 1], data[i + 2]]);
            return out;
        }""",
        [selector, at],
    )


def line_pixels(colours: list[list[int]]) -> int:
    """:return: how many pixels have the power line's colour (light scheme)."""
    return sum(1 for r, g, b in colours if r > 150 and g < 140 and b < 100)


def test_history_shows_where_the_logger_was_down(browser, site) -> None:
    """
    Where the logger was down, the history's power chart leaves a shaded
    gap (named in its data-gaps) with no line across it; where the meter
    was merely idle it draws low power, not a gap.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    selector = "#meter-1 [data-role=power-chart]"
    chart = page.locator(selector)
    wait_for(page, f"() => document.querySelector('{selector}').dataset.gaps !== '[]'")
    down, idle = site["down"], site["idle"]
    assert json.loads(chart.get_attribute("data-gaps")) == [list(down)]
    chart.scroll_into_view_if_needed()
    inside = column_colours(page, selector, (down[0] + down[1]) // 2)
    assert line_pixels(inside) == 0
    # The band is shaded: darker than the white around it.
    assert min(sum(c) for c in inside) < 3 * 250
    # The line is drawn on either side of the outage, and through the idle hour.
    for at in (down[0] - 20 * 60_000, down[1] + 20 * 60_000, (idle[0] + idle[1]) // 2):
        assert line_pixels(column_colours(page, selector, at)) > 0, at
    assert page.errors == []  # type: ignore[attr-defined]


def test_summary_matches_the_database(browser, site) -> None:
    """
    The summary's kWh and cost for the rolling ranges equal the blips in
    exactly those ranges, counted in the database, at the meter's price.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    page.wait_for_selector("#meter-1 [data-role=summary][data-updated]", timeout=TIMEOUT * 1000)
    rows = page.locator("#meter-1 [data-role=summary] tr")
    labels = [rows.nth(i).locator("td").first.text_content() for i in range(rows.count())]
    assert labels == [
        "Today", "Last 24 hours", "Last 7 days", "This week", "a year earlier",
        "This month", "a year earlier", "Last 365 days",
    ]
    for label, span in (("Last 24 hours", DAY), ("Last 7 days", 7 * DAY), ("Last 365 days", 365 * DAY)):
        row = rows.nth(labels.index(label))
        first, last = int(row.get_attribute("data-from")), int(row.get_attribute("data-to"))
        assert last - first == span and last % 60_000 == 0
        assert abs(last - time.time() * 1000) < 5 * 60_000
        shown = float(row.get_attribute("data-kwh"))
        assert shown == pytest.approx(blips(site["database"], 1, first, last) / 1000, abs=1e-9), label
        cost = row.locator("td").nth(2).text_content()
        assert float(cost.replace(",", "")) == pytest.approx(shown * 2.5, abs=0.006)
    assert page.locator("#meter-1 [data-role=currency]").text_content() == "kr"
    diffs = page.locator("#meter-1 td.diff").all_text_contents()
    assert [d for d in diffs if d] and all(d.endswith("%") for d in diffs if d)
    assert page.errors == []  # type: ignore[attr-defined]


def test_overview_shows_every_meter_and_the_total(browser, site, artifacts) -> None:
    """
    The overview shows each meter's power now and energy today side by
    side, and a total equal to their sum computed from what was written and
    the database; on a wall screen the live view, summary and both history
    charts fit on the first screen.
    """
    page = open_page(browser, site["daemon"].url("/"), 1920, 1080, "dark")
    blip_until_shown(page, site["pty"], b"1 1000\n", "3,600")
    site["pty"].write(b"2 6000\n")
    total = page.locator("#overview .card.total")
    # 3600 W for meter 1, 4000 W for meter 2.
    wait_for(page, "() => document.querySelector('#overview .card.total').dataset.watts == 7600")
    assert total.locator("[data-role=watts]").text_content() == "7,600"
    midnight = local_ms(datetime.now(ZONE))
    deadline = time.monotonic() + TIMEOUT
    while True:
        now = int(time.time() * 1000) + 60_000
        today = [
            blips(site["database"], 1, midnight, now) / 1000,
            blips(site["database"], 2, midnight, now) * 4 / 600,
        ]
        cards = [page.locator(f"#overview .card[data-meter='{m}']") for m in (1, 2)]
        shown = [float(card.get_attribute("data-today-kwh")) for card in cards]
        if shown == pytest.approx(today, abs=1e-9):
            break
        assert time.monotonic() < deadline, (shown, today)
        page.wait_for_timeout(200)
    assert float(total.get_attribute("data-today-kwh")) == pytest.approx(sum(today), abs=1e-9)
    assert "kr" in total.locator("[data-role=today] .cost").text_content()
    for role in ("energy-chart", "live-chart"):
        assert page.locator(f"#meter-1 [data-role={role}]").bounding_box()["y"] < 1080 - 180
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    page.screenshot(path=str(artifacts / "wall-dark.png"))
    assert page.errors == []  # type: ignore[attr-defined]


def test_heatmap_counts_each_hour(browser, site, artifacts) -> None:
    """
    The heatmap has a row or column for each of the last 56 local days and
    each hour of the day, and a cell's kWh equals the blips of that local
    hour counted in the database; its tooltip says which hour and how much.
    """
    page = open_page(browser, site["daemon"].url("/"), 1920, 1080)
    heatmap = page.locator("#meter-1 [data-role=heatmap]")
    wait_for(page, "() => document.querySelector('#meter-1 [data-role=heatmap]').dataset.days")
    assert heatmap.get_attribute("data-days") == "56"
    assert heatmap.get_attribute("data-hours") == "24"
    assert heatmap.locator(".cell").count() == 56 * 24
    yesterday = datetime.now(ZONE) - timedelta(days=1)
    cell = heatmap.locator(f".cell[data-date='{yesterday:%Y-%m-%d}'][data-hour='12']")
    expected = blips(site["database"], 1, local_ms(yesterday, 12), local_ms(yesterday, 13)) / 1000
    assert float(cell.get_attribute("data-kwh")) == pytest.approx(expected, abs=1e-9)
    cell.scroll_into_view_if_needed()
    cell.hover()
    tip = heatmap.locator(".tooltip")
    tip.wait_for(state="visible", timeout=TIMEOUT * 1000)
    assert "12:00" in tip.text_content() and tip.text_content().endswith("kWh")
    assert heatmap.locator("[data-role=top]").text_content().endswith("kWh")
    page.locator("#meter-1 .heat").screenshot(path=str(artifacts / "heatmap.png"))
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
        blip_until_shown(page, site["pty"], b"1 1200\n", "3,000")
        page.wait_for_selector("#meter-1 [data-role=summary][data-updated]", timeout=TIMEOUT * 1000)
        wait_for(page, "() => document.querySelector('#meter-1 [data-role=heatmap]').dataset.days")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        assert page.locator("#meter-1 [data-role=power-chart] canvas").bounding_box()["width"] <= 360
        assert page.locator("#meter-1 .heat-grid").bounding_box()["width"] <= 360
        heights = page.evaluate(
            "[...document.querySelectorAll('#meter-1 [data-role=summary] td')]"
            ".map((td) => td.getBoundingClientRect().height)"
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
        requests: list[str] = []
        page = open_page(browser, f"http://127.0.0.1:{port}/power/", 1024, 768)
        page.on("request", lambda r: requests.append(r.url))
        blip_until_shown(page, site["pty"], b"1 1500\n", "2,400")
        page.locator("#meter-1 [data-view=week]").click()
        page.wait_for_timeout(500)
        assert requests and all(f"127.0.0.1:{port}/power/" in url for url in requests)
        assert page.errors == []  # type: ignore[attr-defined]
        site["daemon"].stop()
        page.locator("#meter-1 [data-view=month]").click()
        wait_for(page, "() => !document.getElementById('problem').hidden")
        assert page.locator("#problem").text_content() == "server unreachable, retrying…"
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
