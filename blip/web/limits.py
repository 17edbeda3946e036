"""
The limits of the HTTP API, each defined here once: the routes enforce
them and the OpenAPI document states them.
"""

#: Most digits a number in a legacy path may have.
MAX_DIGITS = 15
#: Most points of ``/last/<id>/<ms>``.
LAST_POINTS = 20_000
#: Most points of ``/since``; ask again from the last stamp + 1 for more.
SINCE_POINTS = 2000
#: Most points of ``/range``.
RANGE_POINTS = 100_000
#: Most rows of ``/minutely``.
MINUTELY_ROWS = 100_000
#: Most buckets of ``/aggregate`` and ``/aggregate_hourly``.
MAX_BUCKETS = 1000

#: Rows of an ``/api/v1`` power series unless ``max_points`` says
#: otherwise, and the most ``max_points`` may ask for.
POWER_POINTS = 2000
POWER_POINTS_CAP = 20_000
#: The calendar periods energy is counted by, and the default one.
PERIODS = ("hour", "day", "week", "month", "year")
DEFAULT_PERIOD = "day"
#: Energy rows in one answer; the rest is a ``next`` page away.
ENERGY_ROWS = 10_000
#: Gaps in one answer; the rest is a ``next`` page away.
GAP_ROWS = 10_000
#: The longest ``min_gap`` of the gaps, in ms.
MAX_MIN_GAP = 10**15
#: The most ``limit`` of ``/readings`` (one page of points; ask again from
#: the last stamp + 1 for more).
READINGS_LIMIT = 100_000

#: Most bytes of a request body (the write API's batch of points); a
#: longer one is refused with 413 before it is read whole.
WRITE_BODY = 1 << 20
#: Most points in one batch of the write API.
WRITE_POINTS = 10_000
#: Seconds a written point may be stamped ahead of this node's clock.
WRITE_AHEAD = 300
#: Gaps this long or longer, in ms, are found from the minute rollups;
#: shorter ones by reading every point, of at most :data:`RAW_GAP_SPAN` ms
#: of the range per answer (the rest is a ``next`` page away).
ROLLUP_GAP = 120_000
RAW_GAP_SPAN = 7 * 86_400_000
#: How far back, in ms, a live stream may resume (``Last-Event-ID``); a
#: client that would replay more opens a new stream and reloads what it
#: shows.
REPLAY_DEPTH = 3_600_000

#: Heavy requests, which read every point of their range without a cap on
#: rows (exports over more than :data:`HEAVY_SPAN` ms, live streams while
#: they replay), that may run at once; more get 503, told to come back
#: after :data:`RETRY_AFTER` seconds.
HEAVY_REQUESTS = 2
HEAVY_SPAN = 7 * 86_400_000
RETRY_AFTER = 2
