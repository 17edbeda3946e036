"""
Tests of the OpenAPI document: valid OpenAPI 3.1, true to the routes the
API has, and true to what a running daemon answers when a property-based
fuzzer (schemathesis) drives every route from it.
"""

import subprocess
import sys
import time
from pathlib import Path

from openapi_spec_validator import validate

from blip.web.v1.openapi import document
from blip.web.v1.routes import ApiV1
from tests.conftest import Database, make_token

HOUR = 3_600_000

METERS = """
[[meter]]
id = 1
label = "House"
pulses_per_kwh = 600
multiplier = 4
price_per_kwh = 2.0
currency = "kr"
timezone = "Europe/Copenhagen"

[[meter.tariff]]
price_per_kwh = 3.0
days = ["mon", "tue", "wed", "thu", "fri"]
hours = "17-21"

[[meter]]
id = 2
label = "Office"
timezone = "Asia/Kolkata"

[[meter]]
id = 3
label = "Empty"
"""


def test_document_is_valid_and_covers_every_route() -> None:
    """
    The served document is valid OpenAPI 3.1 and describes exactly the
    routes the API has.
    """
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    routes = {
        rule.rule.removeprefix(doc["servers"][0]["url"]).replace("<meter>", "{id}")
        for rule in ApiV1.app.url_map.iter_rules()
    }
    assert routes == set(doc["paths"])


def _fill(database: Database) -> None:
    """Three days of blips of meters 1 and 2 up to now, and ingest periods."""
    now = int(time.time() * 1000)
    first = now - 72 * HOUR
    stamps = list(range(first, now, 60_000))
    database.sql(
        "INSERT INTO readings (id, stamp, ms)"
        " SELECT * FROM unnest(%s::integer[], %s::bigint[], %s::integer[])",
        (
            [1] * len(stamps) + [2] * (len(stamps) // 5),
            stamps + stamps[::5][: len(stamps) // 5],
            [60_000 - (s // 60_000) % 50 * 1000 for s in stamps] + [300_000] * (len(stamps) // 5),
        ),
    )
    database.sql(
        "INSERT INTO ingest_periods VALUES ('a', %s, %s, %s, 'stop'), ('a', %s, %s, NULL, NULL)",
        (first, first + 24 * HOUR, first + 24 * HOUR, first + 30 * HOUR, now),
    )


#: Schemathesis's settings: a batch of the write API that the document
#: allows may still be refused (400), for stamps that do not strictly
#: increase or lie ahead of the server's clock, which JSON Schema cannot
#: say; every other check stays as it is.
CONFIG = """
[[operations]]
include-method = "POST"
include-path = "/meters/{id}/readings"

[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404"]
"""


def test_fuzzing_finds_no_error(start_daemon, database: Database, tmp_path: Path) -> None:
    """
    Schemathesis, driven by the document the daemon serves, sends every
    route generated valid and invalid requests — the write API with a
    token of meters 1 and 2, and without it — and finds no 5xx, no answer
    outside the document (status, content type, schema), no valid request
    refused (but a batch the schema cannot judge) or invalid one accepted,
    and no write accepted without its token.
    """
    meters = tmp_path / "meters.toml"
    meters.write_text(METERS)
    daemon = start_daemon("--db", database.dsn, "--meters", str(meters))
    daemon.wait_for("database ready")
    _fill(database)
    token = make_token(database, [1, 2], "fuzzer")
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    schemathesis = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [
            str(schemathesis), "run", daemon.url("/api/v1/openapi.json"),
            # One worker: hypothesis describes its strategies with ast.parse,
            # which CPython 3.11 may fail in two threads at once ("AST
            # constructor recursion depth mismatch", python/cpython#106905),
            # as it did generating the write API's batches.
            "--max-examples", "40", "--request-timeout", "20", "--workers", "1",
            "--phases", "examples,coverage,fuzzing",
            "--suppress-health-check", "too_slow",
            "--header", f"Authorization: Bearer {token}",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout, report
    assert not [line for line in daemon.output if "Traceback" in line], "\n".join(daemon.output)
