-- blipserver's schema. Applied at every start in one transaction; every
-- statement is idempotent, so applying it to a database that already has it
-- changes nothing.
--
-- readings, readings_minutely, readings_hourly, usage_minutely and
-- usage_hourly keep the names and columns of the original blipserver, so its
-- clients and queries keep working. sum_ms is BIGINT (the original's INTEGER
-- overflows when a bucket holds a blip of weeks).

-- readings is partitioned by month of stamp (UTC): the partitions
-- (readings_YYYY_MM, readings_default, and readings_before_YYYY_MM in a
-- database upgraded from a plain table) are made by blipserver, see
-- blip/db/partitions.py. Write to readings, never to a partition: the rollup
-- trigger counts the points of statements on readings.
CREATE TABLE IF NOT EXISTS readings (
    id    INTEGER NOT NULL,
    stamp BIGINT  NOT NULL,   -- unix ms when the blip arrived
    ms    INTEGER NOT NULL,   -- ms since the meter's previous blip
    PRIMARY KEY (id, stamp)
) PARTITION BY RANGE (stamp);

-- The partitions of raw points dropped for --keep-raw (their rollups stay):
-- raw points before the newest to_stamp are gone.
CREATE TABLE IF NOT EXISTS readings_dropped (
    partition  TEXT   NOT NULL,   -- the partition's name
    from_stamp BIGINT,            -- its first stamp; NULL: from the first
    to_stamp   BIGINT NOT NULL,   -- the stamp after its last
    rows       BIGINT NOT NULL,   -- the points it held
    dropped    BIGINT NOT NULL,   -- unix ms it was dropped
    PRIMARY KEY (partition, dropped)
);

-- Rollups: one row per meter and UTC-aligned minute or hour
-- (stamp - stamp % 60000, stamp - stamp % 3600000). Their primary keys
-- carry every column (INCLUDE), so that a meter's minutes or hours over a
-- range are read from the key alone, in order (an index-only scan), a few
-- pages for a week of hours, however the rows lie in the table: rows
-- written by upserts, a rebuild or an upgrade lie anywhere, and reading
-- them one by one cost a page per row.
CREATE TABLE IF NOT EXISTS readings_minutely (
    id     INTEGER NOT NULL,
    stamp  BIGINT  NOT NULL,
    events INTEGER NOT NULL,
    sum_ms BIGINT  NOT NULL,
    min_ms INTEGER NOT NULL,
    max_ms INTEGER NOT NULL,
    PRIMARY KEY (id, stamp) INCLUDE (events, sum_ms, min_ms, max_ms)
);

CREATE TABLE IF NOT EXISTS readings_hourly (
    id     INTEGER NOT NULL,
    stamp  BIGINT  NOT NULL,
    events INTEGER NOT NULL,
    sum_ms BIGINT  NOT NULL,
    min_ms INTEGER NOT NULL,
    max_ms INTEGER NOT NULL,
    PRIMARY KEY (id, stamp) INCLUDE (events, sum_ms, min_ms, max_ms)
);

-- A rollup keyed by (id, stamp) alone (made by an older blipserver, or
-- the original's) gets that key in its place.
DO $$
DECLARE
    rollup  TEXT;
    old_key TEXT;
BEGIN
    FOREACH rollup IN ARRAY ARRAY['readings_minutely', 'readings_hourly'] LOOP
        SELECT c.conname INTO old_key
          FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid
         WHERE c.conrelid = rollup::regclass AND c.contype = 'p' AND i.indnatts = i.indnkeyatts;
        IF old_key IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I,'
                           ' ADD PRIMARY KEY (id, stamp) INCLUDE (events, sum_ms, min_ms, max_ms)',
                           rollup, old_key);
        END IF;
    END LOOP;
END
$$;

-- wh is the original's name for the mean power in W at 1000 pulses/kWh.
CREATE OR REPLACE VIEW usage_minutely AS
SELECT id, stamp, 3600000.0::DOUBLE PRECISION * events / sum_ms AS wh,
       min_ms, max_ms, events
  FROM readings_minutely;

CREATE OR REPLACE VIEW usage_hourly AS
SELECT id, stamp, 3600000.0::DOUBLE PRECISION * events / sum_ms AS wh,
       min_ms, max_ms, events
  FROM readings_hourly;

-- Rollups are kept by one statement-level trigger: set-based (one upsert per
-- table per INSERT or COPY, whoever the writer is), in the writer's
-- transaction, and correct under concurrent writers (ON CONFLICT serialises
-- on the bucket's row; buckets are taken in key order, so no deadlocks).
-- The transition table holds only rows really inserted, so rows skipped by
-- ON CONFLICT DO NOTHING are not counted twice.
CREATE OR REPLACE FUNCTION blip_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO readings_minutely AS r (id, stamp, events, sum_ms, min_ms, max_ms)
    SELECT n.id, n.stamp - n.stamp % 60000, count(*), sum(n.ms), min(n.ms), max(n.ms)
      FROM inserted n
     GROUP BY 1, 2
     ORDER BY 1, 2
    ON CONFLICT (id, stamp) DO UPDATE
       SET events = r.events + excluded.events,
           sum_ms = r.sum_ms + excluded.sum_ms,
           min_ms = least(r.min_ms, excluded.min_ms),
           max_ms = greatest(r.max_ms, excluded.max_ms);

    INSERT INTO readings_hourly AS r (id, stamp, events, sum_ms, min_ms, max_ms)
    SELECT n.id, n.stamp - n.stamp % 3600000, count(*), sum(n.ms), min(n.ms), max(n.ms)
      FROM inserted n
     GROUP BY 1, 2
     ORDER BY 1, 2
    ON CONFLICT (id, stamp) DO UPDATE
       SET events = r.events + excluded.events,
           sum_ms = r.sum_ms + excluded.sum_ms,
           min_ms = least(r.min_ms, excluded.min_ms),
           max_ms = greatest(r.max_ms, excluded.max_ms);
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgname = 'blip_rollup'
                      AND tgrelid = 'readings'::regclass) THEN
        CREATE TRIGGER blip_rollup AFTER INSERT ON readings
            REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION blip_rollup();
    END IF;
END
$$;

-- When ingest was running with its serial source open, so that a gap in
-- readings can be told apart: inside a period the meter did not blink
-- (idle); outside, nothing was listening (logger down). One row per opening
-- of a source; alive_at is refreshed while it stays open, so the end of a
-- period cut short by a crash is known to within that refresh.
CREATE TABLE IF NOT EXISTS ingest_periods (
    node       TEXT   NOT NULL,   -- the ingest node's name
    started    BIGINT NOT NULL,   -- unix ms the source opened
    alive_at   BIGINT NOT NULL,   -- unix ms it was last known open
    ended      BIGINT,            -- unix ms it closed; NULL while open
    end_reason TEXT,              -- 'stop', 'device lost', 'crash'
    PRIMARY KEY (node, started)
);

-- The meters: their settings from the --meters file and the descriptions
-- their Arduino gave in INFO lines; a meter first seen on the serial line
-- gets the default settings.
CREATE TABLE IF NOT EXISTS meters (
    id             INTEGER PRIMARY KEY,
    label          TEXT             NOT NULL,
    description    TEXT             NOT NULL,
    pulses_per_kwh DOUBLE PRECISION NOT NULL,   -- impulses per kWh of its LED
    multiplier     DOUBLE PRECISION NOT NULL,   -- current transformer ratio
    price_per_kwh  DOUBLE PRECISION NOT NULL,
    currency       TEXT             NOT NULL,
    timezone       TEXT             NOT NULL    -- IANA zone of its days
);

-- The schema's version: one row per version reached, with where it came
-- from (created, or upgraded from one of the original's layouts). Upgrades
-- are ordered steps from the highest version here (see blip/db/upgrades.py).
CREATE TABLE IF NOT EXISTS blip_schema (
    version INTEGER PRIMARY KEY,
    applied BIGINT  NOT NULL,   -- unix ms
    note    TEXT    NOT NULL
);

-- Device tokens of the write API (POST /api/v1/meters/<id>/readings): each
-- writes only its meters. The token given out is "<id>.<secret>"; only the
-- SHA-256 of its secret is kept (a secret of 32 random bytes needs no slow
-- hash), and it is compared in constant time. `blip token` makes, lists
-- and revokes them.
CREATE TABLE IF NOT EXISTS device_tokens (
    id      TEXT      PRIMARY KEY,   -- the token's public part
    name    TEXT      NOT NULL,      -- what it is for (the device)
    meters  INTEGER[] NOT NULL,      -- the meters it may write
    hash    BYTEA     NOT NULL,      -- SHA-256 of its secret
    created BIGINT    NOT NULL,      -- unix ms
    revoked BIGINT                   -- unix ms; NULL while it is valid
);

-- Stretches when this node's logger was down, filled with the points of a
-- peer logger of the same meter (--peer, `blip repair`): one row per
-- stretch, each repaired once, from one peer.
CREATE TABLE IF NOT EXISTS repairs (
    meter    INTEGER NOT NULL,
    started  BIGINT  NOT NULL,   -- unix ms the stretch starts
    ended    BIGINT  NOT NULL,   -- unix ms it ends
    peer     TEXT    NOT NULL,   -- the peer's URL
    points   INTEGER NOT NULL,   -- points stored from it
    repaired BIGINT  NOT NULL,   -- unix ms of the repair
    PRIMARY KEY (meter, started)
);
