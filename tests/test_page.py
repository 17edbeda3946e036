"""
The power page in a real headless Chromium, against ``twistd -n blip`` fed
through a pty, with a year of history in the database: the live graph
moves on every blip, the history zooms, pans and resets, the summary
matches the database, and the page works on a phone and behind a reverse
proxy under a path prefix.
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
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import ROOT, TIMEOUT, free_port

DAY = 86_400_000
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


def fill_history(dsn: str, now_ms: int) -> None:
    """
    A year and a bit of history: meter 1 blinks every 5 minutes at night
    and every minute by day (in UTC), meter 2 every 10 minutes.
    """
    rows = io.StringIO()
    start = now_ms - 400 * DAY
    start -= start % 60_000
    stamp = start
    while stamp < now_ms - 60_000:
        hour = (stamp // 3_600_000) % 24
        ms = 60_000 if 7 <= hour < 22 else 300_000
        rows.write(f"1\t{stamp}\t{ms}\n")
        stamp += ms
    for stamp in range(start, now_ms - 600_000, 600_000):
        rows.write(f"2\t{stamp}\t600000\n")
    rows.seek(0)
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.copy_expert("COPY readings (id, stamp, ms) FROM STDIN", rows)
    finally:
        connection.close()


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
    fill_history(database.dsn, int(time.time() * 1000))
    pty_meter.write(b"partial\n")
    yield {"daemon": daemon, "pty": pty_meter, "database": database}


def api(daemon, path: str) -> dict:
    """:return: a JSON answer of the daemon."""
    with urllib.request.urlopen(daemon.url(path), timeout=TIMEOUT) as answer:
        return json.loads(answer.read())


def open_page(browser, url: str, width: int, height: int):
    """:return: a page at ``url`` once the first meter's views are drawn."""
    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-US")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector("section.meter:not([hidden]) [data-role=summary] tr", timeout=TIMEOUT * 1000)
    page.wait_for_selector(
        "section.meter:not([hidden]) [data-role=power-chart][data-points]", timeout=TIMEOUT * 1000
    )
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


def test_live_view_moves_on_every_blip(browser, site, tmp_path) -> None:
    """
    On a desktop screen the live view shows each blip as it arrives: the
    power, the time of the last blip, and one more point on the chart.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    blip_until_shown(page, site["pty"], b"1 1000\n", "3,600")
    chart = page.locator("section.meter:not([hidden]) [data-role=live-chart]")
    before = int(chart.get_attribute("data-points"))
    site["pty"].write(b"1 2000\n")
    page.wait_for_function(
        "n => document.querySelector('section.meter:not([hidden]) [data-role=live-chart]')"
        ".dataset.points > n", arg=before, timeout=TIMEOUT * 1000,
    )
    assert page.locator("section.meter:not([hidden]) [data-role=watts]").text_content() == "1,800"
    assert "last blip" in page.locator("section.meter:not([hidden]) [data-role=last]").text_content()
    assert page.locator("#connection").get_attribute("data-state") == "live"
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]


def test_meters_are_named_and_each_has_its_view(browser, site) -> None:
    """
    Both configured meters have a tab with their label; choosing one shows
    its view, its power computed from its own pulses and multiplier.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    tabs = page.locator("nav#meters button")
    assert tabs.count() == 2
    assert "House" in tabs.nth(0).text_content()
    tabs.nth(1).click()
    assert page.locator("#meter-2").is_visible()
    assert not page.locator("#meter-1").is_visible()
    # 600 pulses/kWh behind a x4 transformer: 3.6e9 * 4 / (600 * 6000) = 4000 W.
    blip_until_shown(page, site["pty"], b"2 6000\n", "4,000")


def test_history_zooms_pans_and_resets(browser, site) -> None:
    """
    Dragging across the power chart zooms in (and fetches finer data),
    the pan buttons move the range, double-click goes back to the view,
    and the week/month/year views cover their spans.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    chart = page.locator("#meter-1 [data-role=power-chart]")

    def span() -> tuple[int, int]:
        return int(chart.get_attribute("data-from")), int(chart.get_attribute("data-to"))

    whole = span()
    assert abs((whole[1] - whole[0]) - DAY) < 60_000
    over = page.locator("#meter-1 [data-role=power-chart] .u-over")
    over.scroll_into_view_if_needed()
    box = over.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "w => { const c = document.querySelector('#meter-1 [data-role=power-chart]');"
        " return c.dataset.to - c.dataset.from < w / 2; }",
        arg=whole[1] - whole[0], timeout=TIMEOUT * 1000,
    )
    zoomed = span()
    assert zoomed[0] > whole[0] and zoomed[1] < whole[1]
    page.locator("#meter-1 [data-pan='-1']").click()
    page.wait_for_function(
        "f => document.querySelector('#meter-1 [data-role=power-chart]').dataset.from < f",
        arg=zoomed[0], timeout=TIMEOUT * 1000,
    )
    page.locator("#meter-1 [data-role=power-chart] .u-over").dblclick()
    page.wait_for_function(
        "f => document.querySelector('#meter-1 [data-role=power-chart]').dataset.from == f",
        arg=whole[0], timeout=TIMEOUT * 1000,
    )
    for view, days in (("week", 7), ("month", 30), ("year", 365)):
        page.locator(f"#meter-1 [data-view={view}]").click()
        page.wait_for_function(
            "d => { const c = document.querySelector('#meter-1 [data-role=power-chart]');"
            " return Math.abs(c.dataset.to - c.dataset.from - d * 86400000) < 3600000; }",
            arg=days, timeout=TIMEOUT * 1000,
        )
        points = int(chart.get_attribute("data-points"))
        assert 0 < points <= 2600
    bars = int(page.locator("#meter-1 [data-role=energy-chart]").get_attribute("data-bars"))
    assert 12 <= bars <= 14
    assert page.errors == []  # type: ignore[attr-defined]


def test_summary_matches_the_database(browser, site) -> None:
    """
    The summary's kWh and cost agree with the blips counted in the
    database and the meter's price.
    """
    page = open_page(browser, site["daemon"].url("/"), 1280, 900)
    page.wait_for_selector("#meter-1 [data-role=summary][data-updated]", timeout=TIMEOUT * 1000)
    rows = page.locator("#meter-1 [data-role=summary] tr")
    labels = [rows.nth(i).locator("td").first.text_content() for i in range(rows.count())]
    assert labels[:5] == ["Today", "Last 24 hours", "Last 7 days", "This month", "Last 365 days"]
    now = int(time.time() * 1000)
    for label, span in (("Last 7 days", 7 * DAY), ("Last 365 days", 365 * DAY)):
        row = rows.nth(labels.index(label))
        shown = float(row.get_attribute("data-kwh"))
        counted = site["database"].sql(
            "SELECT count(*) FROM readings WHERE id = 1 AND stamp > %s AND stamp <= %s",
            (now - span, now),
        )[0][0] / 1000
        # Whole hours at each end may be counted or not.
        assert abs(shown - counted) <= 2 * 60 / 1000 + 1e-9, label
        cost = row.locator("td").nth(2).text_content()
        assert cost.endswith("kr")
        assert float(cost.split()[0].replace(",", "")) == pytest.approx(shown * 2.5, abs=0.01)
    diffs = page.locator("#meter-1 td.diff").all_text_contents()
    assert [d for d in diffs if d] and all(d.endswith("%") for d in diffs if d)


def test_phone_layout(browser, site, tmp_path) -> None:
    """
    On a phone-sized screen nothing is wider than the screen and the live
    view and history are there.
    """
    page = open_page(browser, site["daemon"].url("/"), 390, 844)
    blip_until_shown(page, site["pty"], b"1 1200\n", "3,000")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert page.locator("#meter-1 [data-role=power-chart] canvas").bounding_box()["width"] <= 390
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)


def test_behind_a_reverse_proxy_under_a_prefix(browser, site) -> None:
    """
    Served by a reverse proxy under /power/, the page loads its files and
    data through the prefix and still updates live.
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
