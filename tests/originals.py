"""
The original blipserver's database layouts, built for tests as its
``schema.sql`` laid them out, and filled the way it filled them: row by row
through its per-row trigger; and blipserver's own layout before readings
was partitioned.

Also the answers the original gave on its legacy routes, computed with SQL
of the same meaning on the original database, to compare with blipserver's
after the upgrade.
"""

from dataclasses import dataclass
from typing import Any, Callable

import psycopg2

HOUR = 3_600_000
MINUTE = 60_000
#: Not aligned on an hour, so that the first and last hours are partial.
T0 = 1_700_000_123_456

MULTI = "multi"
SINGLE = "single"
SINGLE_WITH_MINUTES = "single with minutes"
LAYOUTS = (MULTI, SINGLE, SINGLE_WITH_MINUTES)
#: blipserver's own layout before readings were partitioned (version 3).
PLAIN = "blipserver's plain readings"

_MULTI = """
CREATE TABLE readings (
    id    INTEGER,
    stamp BIGINT,
    ms    INTEGER,
    PRIMARY KEY (id, stamp)
);
CREATE TABLE readings_hourly (
    id     INTEGER,
    stamp  BIGINT,
    events INTEGER,
    sum_ms INTEGER,
    min_ms INTEGER,
    max_ms INTEGER,
    PRIMARY KEY (id, stamp)
);
CREATE FUNCTION do_monthly_aggregate() RETURNS trigger AS $$
DECLARE
    hour BIGINT := 1000 * extract(epoch FROM date_trunc('hour', to_timestamp(NEW.stamp / 1000)));
BEGIN
    IF NOT EXISTS (SELECT 1 FROM readings_hourly WHERE id = NEW.id AND stamp = hour) THEN
        INSERT INTO readings_hourly (id, stamp, events, sum_ms, min_ms, max_ms)
        VALUES (NEW.id, hour, 0, 0, NEW.ms, NEW.ms);
    END IF;
    UPDATE readings_hourly
       SET events = events + 1, sum_ms = sum_ms + NEW.ms,
           min_ms = least(min_ms, NEW.ms), max_ms = greatest(max_ms, NEW.ms)
     WHERE id = NEW.id AND stamp = hour;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER monthly_aggregate AFTER INSERT ON readings
    FOR EACH ROW EXECUTE PROCEDURE do_monthly_aggregate();
CREATE VIEW usage_hourly AS
SELECT id, stamp, 3600000.0::DOUBLE PRECISION * events / sum_ms AS wh, min_ms, max_ms, events
  FROM readings_hourly;
"""

_SINGLE_TABLES = """
CREATE TABLE readings (
    stamp BIGINT PRIMARY KEY,
    ms    INTEGER
);
CREATE TABLE readings_hourly (
    stamp  BIGINT PRIMARY KEY,
    events INTEGER,
    sum_ms INTEGER,
    min_ms INTEGER,
    max_ms INTEGER
);
CREATE VIEW usage_hourly AS
SELECT stamp, 3600000.0::DOUBLE PRECISION * events / sum_ms AS wh, min_ms, max_ms, events
  FROM readings_hourly;
"""

_SINGLE_MINUTES = """
CREATE TABLE readings_minutely (
    stamp  BIGINT PRIMARY KEY,
    events INTEGER,
    sum_ms INTEGER,
    min_ms INTEGER,
    max_ms INTEGER
);
CREATE VIEW usage_minutely AS
SELECT stamp, 3600000.0::DOUBLE PRECISION * events / sum_ms AS wh, min_ms, max_ms, events
  FROM readings_minutely;
"""

_SINGLE_BUCKET = """
    IF NOT EXISTS (SELECT 1 FROM {table} WHERE stamp = {var}) THEN
        INSERT INTO {table} (stamp, events, sum_ms, min_ms, max_ms)
        VALUES ({var}, 0, 0, NEW.ms, NEW.ms);
    END IF;
    UPDATE {table}
       SET events = events + 1, sum_ms = sum_ms + NEW.ms,
           min_ms = least(min_ms, NEW.ms), max_ms = greatest(max_ms, NEW.ms)
     WHERE stamp = {var};
"""


def _single_function(minutes: bool) -> str:
    body = _SINGLE_BUCKET.format(table="readings_hourly", var="hour")
    if minutes:
        body += _SINGLE_BUCKET.format(table="readings_minutely", var="minute")
    return f"""
CREATE FUNCTION do_monthly_aggregate() RETURNS trigger AS $$
DECLARE
    hour BIGINT := 1000 * extract(epoch FROM date_trunc('hour', to_timestamp(NEW.stamp / 1000)));
    minute BIGINT := 1000 * extract(epoch FROM date_trunc('minute', to_timestamp(NEW.stamp / 1000)));
BEGIN
{body}
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER monthly_aggregate AFTER INSERT ON readings
    FOR EACH ROW EXECUTE PROCEDURE do_monthly_aggregate();
"""


def plain_sql(versioned: bool = True) -> str:
    """
    :return: blipserver's schema as it was before readings were
        partitioned (version 3): a plain readings table, then the rest of
        ``schema.sql`` (whose readings table it does not make again),
        recorded as version 3 unless ``versioned`` is false (as blipserver
        made it before it recorded versions).
    """
    from blip.db.schema import schema_sql

    text = (
        "CREATE TABLE IF NOT EXISTS readings (id INTEGER NOT NULL, stamp BIGINT NOT NULL, ms INTEGER NOT NULL,"
        " PRIMARY KEY (id, stamp));"
        + schema_sql()
        + "DROP TABLE readings_dropped;"
    )
    if versioned:
        return text + "INSERT INTO blip_schema VALUES (3, 0, 'created');"
    return text + "DROP TABLE blip_schema; DROP TABLE meters;"


def layout_sql(layout: str) -> str:
    """:return: the original's schema for ``layout`` (or blipserver's plain one)."""
    if layout == PLAIN:
        return plain_sql()
    if layout == MULTI:
        return _MULTI
    minutes = layout == SINGLE_WITH_MINUTES
    return _SINGLE_TABLES + (_SINGLE_MINUTES if minutes else "") + _single_function(minutes)


def meters_of(layout: str) -> list[int]:
    """:return: the meters a layout's test data has."""
    return [1, 2] if layout in (MULTI, PLAIN) else [1]


def execute(dsn: str, statement: str, params: Any = None, timezone: str = "UTC") -> None:
    """
    Run statements in one transaction, in a session with the given time
    zone (the original's trigger cuts hours in the session's zone).
    """
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE %s", (timezone,))
            cursor.execute(statement, params)
    finally:
        connection.close()


def build(dsn: str, layout: str) -> None:
    """Lay out an empty database as the original did."""
    execute(dsn, layout_sql(layout))


def fill(dsn: str, layout: str, rows: int, start: int = T0, timezone: str = "Europe/Copenhagen") -> None:
    """
    Insert ``rows`` readings per meter from ``start``, about 3.7 s apart,
    through the original's per-row trigger, as its server did.
    """
    points = (
        "SELECT m, %(t0)s::bigint + i * 3700 + (i * 7919) %% 1000 + m,"
        "       200 + (i * 7919 + m * 104729) %% 9000"
        "  FROM generate_series(0::bigint, %(n)s - 1) i, unnest(%(meters)s::integer[]) m"
    )
    if layout in (MULTI, PLAIN):
        statement = "INSERT INTO readings (id, stamp, ms) " + points
    else:
        statement = "INSERT INTO readings (stamp, ms) SELECT stamp, ms FROM (" + points + ") p(m, stamp, ms)"
    execute(dsn, statement, {"t0": start, "n": rows, "meters": meters_of(layout)}, timezone)


@dataclass
class Route:
    """
    A legacy route and the original's answer to it, computed with SQL on the
    original database.
    """

    path: str
    answer: Any


def original_answers(sql: Callable[..., list[tuple]], layout: str, now: int, rows: int) -> list[Route]:
    """
    The original's answers to every legacy route with data, for each meter
    (and the forms without a meter for meter 1).

    :param sql: runs one statement on the original database.
    :param now: the time the relative routes are asked at, unix ms.
    :param rows: how many readings each meter has.
    """
    single = layout not in (MULTI, PLAIN)
    routes = []
    end = T0 + rows * 3700
    for meter in meters_of(layout):
        where = "" if single else f"id = {meter} AND "
        prefixes = [f"/{meter}"] + ([""] if meter == 1 else [])

        def q(statement: str, *params: Any) -> list[list]:
            return [list(row) for row in sql(statement.replace("{m}", where), params)]

        answers: dict[str, Any] = {
            "/last": q("SELECT stamp, ms FROM readings WHERE {m} TRUE ORDER BY stamp DESC LIMIT 1")[0],
            f"/since/{T0 + 5 * HOUR}": q(
                "SELECT stamp, ms FROM readings WHERE {m} stamp >= %s ORDER BY stamp LIMIT 2000",
                T0 + 5 * HOUR,
            ),
            f"/range/{T0 + HOUR}/{T0 + 3 * HOUR}": q(
                "SELECT stamp, ms FROM readings WHERE {m} stamp BETWEEN %s AND %s"
                " ORDER BY stamp LIMIT 100000", T0 + HOUR, T0 + 3 * HOUR,
            ),
            f"/aggregate/{T0}/{HOUR}/40": q(
                "SELECT %s * ((stamp - %s) / %s), count(*) FROM readings"
                " WHERE {m} stamp >= %s AND stamp < %s GROUP BY 1 ORDER BY 1",
                HOUR, T0, HOUR, T0, T0 + 40 * HOUR,
            ),
            f"/aggregate_hourly/{T0 - T0 % HOUR}/{3 * HOUR}/20": q(
                "SELECT %s * ((stamp - %s) / %s), sum(wh) FROM usage_hourly"
                " WHERE {m} stamp >= %s AND stamp < %s GROUP BY 1 ORDER BY 1",
                3 * HOUR, T0 - T0 % HOUR, 3 * HOUR, T0 - T0 % HOUR, T0 - T0 % HOUR + 60 * HOUR,
            ),
            f"/hourly/{T0 - HOUR}/{end + HOUR}": q(
                "SELECT stamp, events, wh, min_ms, max_ms FROM usage_hourly"
                " WHERE {m} stamp BETWEEN %s AND %s ORDER BY stamp", T0 - HOUR, end + HOUR,
            ),
            f"/usage/{2 * HOUR}": q(
                "SELECT count(*) FROM readings WHERE {m} stamp >= %s", now - 2 * HOUR
            )[0],
        }
        minutes = "usage_minutely" if layout == SINGLE_WITH_MINUTES else (
            "(SELECT * FROM usage_minutely WHERE {m} TRUE) r" if layout == PLAIN else (
            "(SELECT stamp - stamp %% 60000 AS stamp, count(*) AS events,"
            " 3600000.0::DOUBLE PRECISION * count(*) / sum(ms) AS wh,"
            " min(ms) AS min_ms, max(ms) AS max_ms FROM readings WHERE {m} TRUE GROUP BY 1) r"
        ))
        answers[f"/minutely/{T0 + 2 * HOUR}/{T0 + 4 * HOUR}"] = q(
            f"SELECT stamp, events, wh, min_ms, max_ms FROM {minutes}"
            " WHERE stamp BETWEEN %s AND %s ORDER BY stamp LIMIT 100000",
            T0 + 2 * HOUR, T0 + 4 * HOUR,
        )
        for prefix in prefixes:
            for path, answer in answers.items():
                head, _, rest = path[1:].partition("/")
                full = f"/{head}{prefix}" + (f"/{rest}" if rest else "")
                routes.append(Route(full, answer))
        routes.append(Route(f"/last/{meter}/{2 * HOUR}", q(
            "SELECT stamp, ms FROM readings WHERE {m} stamp >= %s ORDER BY stamp LIMIT 20000",
            now - 2 * HOUR,
        )))
    return routes


def snapshot(sql: Callable[..., list[tuple]]) -> dict[str, Any]:
    """
    Everything about a database a refused upgrade must leave as it was: its
    relations, columns, constraints, triggers, functions and every row of
    its tables.
    """
    state: dict[str, Any] = {
        "relations": sql(
            "SELECT relname, relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE nspname = 'public' ORDER BY 1"
        ),
        "columns": sql(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, ordinal_position"
        ),
        "constraints": sql(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace ORDER BY 1"
        ),
        "triggers": sql("SELECT tgname, tgfoid::regproc::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"),
        "functions": sql(
            "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
        ),
    }
    tables = [name for name, kind in state["relations"] if kind == "r"]
    for table in tables:
        state[table] = sql(f'SELECT * FROM "{table}" ORDER BY 1, 2')
    return state


def recount(sql: Callable[..., list[tuple]], width: int) -> list[tuple]:
    """:return: rollup rows ``(id, stamp, events, sum_ms, min_ms, max_ms)`` recomputed from readings."""
    return sql(
        "SELECT id, stamp - stamp %% %s, count(*), sum(ms), min(ms), max(ms)"
        "  FROM readings GROUP BY 1, 2 ORDER BY 1, 2",
        (width,),
    )


def rollups(sql: Callable[..., list[tuple]], table: str) -> list[tuple]:
    """:return: the rows of a rollup table, by meter and stamp."""
    return sql(f"SELECT id, stamp, events, sum_ms, min_ms, max_ms FROM {table} ORDER BY 1, 2")


def assert_rollups_match(sql: Callable[..., list[tuple]]) -> None:
    """Both rollup tables hold exactly a recount of readings."""
    assert rollups(sql, "readings_minutely") == recount(sql, MINUTE)
    assert rollups(sql, "readings_hourly") == recount(sql, HOUR)
