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
