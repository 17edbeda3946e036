"""
The OpenAPI 3.1 document of the modern API, served at
``/api/v1/openapi.json``. The tests check every answer of every route
against it.
"""

from typing import Any

import blip
from blip.meters import DAYS
from blip.model import INT_MAX, STAMP_MAX
from blip.web.answers import RAW_SINCE, V1_PREFIX
from blip.web.limits import (
    DEFAULT_PERIOD,
    ENERGY_ROWS,
    GAP_ROWS,
    HEAVY_REQUESTS,
    HEAVY_SPAN,
    MAX_MIN_GAP,
    PERIODS,
    POWER_POINTS,
    POWER_POINTS_CAP,
    RAW_GAP_SPAN,
    READINGS_LIMIT,
    REPLAY_DEPTH,
    RETRY_AFTER,
    ROLLUP_GAP,
    WRITE_AHEAD,
    WRITE_BODY,
    WRITE_POINTS,
)
from blip.web.v1.live import HEARTBEAT
from blip.web.v1.query import EARLIEST, INTEGER, LATEST, MAX_VALUE

#: Where the paths below are, on the host that serves the document (a
#: reverse proxy that serves blipserver under a path prefix adds it).
SERVER = V1_PREFIX.decode()

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _object(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _get(
    operation: str, summary: str, description: str, parameters: list[Any], ok: dict[str, Any],
    raw: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": ok}}
    if raw:
        responses["200"]["headers"] = {RAW_SINCE.decode(): _RAW_SINCE_HEADER}
    if any(p.get("$ref", "").endswith("/MeterId") for p in parameters) or operation == "live":
        responses["404"] = _PROBLEM
    if parameters:
        responses["400"] = _PROBLEM
    responses["503"] = _PROBLEM
    return {
        "get": {
            "operationId": operation,
            "summary": summary,
            "description": description,
            "parameters": parameters,
            "responses": dict(sorted(responses.items())),
        }
    }


_UNIX_MS = {"type": "integer", "description": "Unix time in milliseconds."}
_HEAVY = (
    f" Over a range of more than {HEAVY_SPAN // 86_400_000} days, a heavy request: at most"
    f" {HEAVY_REQUESTS} run at once, and more get 503 with `Retry-After: {RETRY_AFTER}`."
)
_DROPPED = (
    "Raw points before this unix ms were dropped (`--keep-raw`): the answer holds what is"
    " left; their minute and hour rollups, and so power and energy, stay."
)
_RAW_SINCE: dict[str, Any] = {
    "type": ["integer", "null"],
    "description": _DROPPED + " Null while none were dropped.",
}
_RAW_SINCE_HEADER = {
    "description": _DROPPED + " Absent while none were dropped.",
    "schema": {"type": "string", "pattern": "^-?[0-9]+$"},
}
_WATTS = {"type": "number", "minimum": 0, "description": "Power in W."}


def _time(name: str, default: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": (
            f"{default} Unix ms, or an ISO 8601 date or date-time; one without an offset"
            " is local time in the meter's time zone."
        ),
        "schema": {
            "anyOf": [
                {"type": "integer", "minimum": EARLIEST, "maximum": LATEST},
                {"type": "string", "format": "date-time"},
            ]
        },
    }


def _write() -> dict[str, Any]:
    """
    :return: the write API's operation.
    """
    return {
        "post": {
            "operationId": "writeReadings",
            "summary": "Store points from a device",
            "description": (
                "Store a batch of the meter's points, sent by a logger elsewhere (another"
                " blipserver forwarding its points, a device) with a token that may write the"
                " meter (`blip token create --meter ID --name NAME`). The batch is checked"
                f" whole before anything is stored: at most {WRITE_POINTS} points, stamps"
                f" strictly increasing and at most {WRITE_AHEAD} s ahead of the server's clock,"
                " ms from 1. Points already stored are skipped, so a batch sent again stores"
                " nothing twice. Recent points reach the long-polls and live streams as if"
                " read from a serial line; older ones are history. A body over"
                f" {WRITE_BODY} bytes is refused (413) before it is read."
            ),
            "security": [{"token": []}],
            "parameters": [_param("MeterId")],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("Batch")},
                    "text/csv": {
                        "schema": {
                            "type": "string",
                            "description": "`stamp,ms` lines; a `stamp,ms` header is optional.",
                        }
                    },
                },
            },
            "responses": {
                "200": {
                    "description": "Stored.",
                    "content": {"application/json": {"schema": _ref("Written")}},
                },
                "400": _PROBLEM,
                "401": {
                    **_PROBLEM,
                    "description": "No token, or one that is malformed, unknown or revoked.",
                },
                "403": {**_PROBLEM, "description": "A token that may not write this meter."},
                "404": _PROBLEM,
                "413": _PROBLEM,
                "415": _PROBLEM,
                "503": _PROBLEM,
            },
        }
    }


def document() -> dict[str, Any]:
    """
    :return: the OpenAPI document.
    """
    schemas = {
        "Problem": _object(
            {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string", "description": "What is wrong."},
                "error": {"type": "string", "description": "The same as `detail`."},
            },
            "An error (RFC 9457).",
        ),
        "TariffRule": _object(
            {
                "price_per_kwh": {"type": "number", "minimum": 0},
                "days": {
                    "type": "array",
                    "items": {"enum": list(DAYS)},
                    "minItems": 1,
                },
                "hours": {
                    "type": "string",
                    "pattern": "^[0-9]{2}-[0-9]{2}$",
                    "description": "Local hours from (included) to (excluded); `22-06` runs past midnight.",
                },
            },
            "One price of a time-of-use tariff; the first rule that matches an hour sets its price.",
        ),
        "LastPoint": _object(
            {
                "stamp": {**_UNIX_MS, "description": "When the blip was seen."},
                "ms": {"type": "integer", "minimum": 1, "description": "ms since the previous blip."},
                "watts": _WATTS,
            }
        ),
        "Meter": _object(
            {
                "id": {"type": "integer", "minimum": 0, "maximum": INT_MAX},
                "label": {"type": "string"},
                "description": {"type": "string", "description": "What the Arduino says of it."},
                "pulses_per_kwh": {"type": "number", "exclusiveMinimum": 0},
                "multiplier": {"type": "number", "exclusiveMinimum": 0},
                "price_per_kwh": {"type": "number", "minimum": 0},
                "currency": {"type": "string"},
                "timezone": {"type": "string", "description": "IANA time zone of its calendar."},
                "tariff": {
                    "description": "Time-of-use prices; hours no rule matches cost `price_per_kwh`.",
                    "oneOf": [{"type": "null"}, {"type": "array", "items": _ref("TariffRule")}],
                },
                "last": {"oneOf": [{"type": "null"}, _ref("LastPoint")]},
            },
            "A meter's settings and its newest point.",
        ),
        "Meters": _object({"meters": {"type": "array", "items": _ref("Meter")}}),
        "Power": _object(
            {
                "meter": {"type": "integer"},
                "from": _UNIX_MS,
                "to": _UNIX_MS,
                "resolution_ms": {
                    "type": "integer",
                    "minimum": 0,
                    "description": (
                        "0 for raw points; else the width of each row's bucket (always, for a"
                        " range that starts before `raw_since`)."
                    ),
                },
                "raw_since": _RAW_SINCE,
                "points": {
                    "type": "array",
                    "description": (
                        "`[t, mean_w, min_w, max_w]`, oldest first; `t` is the middle of the"
                        " interval the row covers."
                    ),
                    "items": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 4,
                        "maxItems": 4,
                    },
                },
            }
        ),
        "EnergyRow": _object(
            {
                "start": _UNIX_MS,
                "end": {**_UNIX_MS, "description": "When the next period starts."},
                "kwh": {"type": "number", "minimum": 0},
                "cost": {"type": "number", "minimum": 0},
            }
        ),
        "Energy": _object(
            {
                "meter": {"type": "integer"},
                "period": {"enum": list(PERIODS)},
                "timezone": {"type": "string"},
                "currency": {"type": "string"},
                "rows": {"type": "array", "items": _ref("EnergyRow")},
                "total": _object(
                    {"kwh": {"type": "number", "minimum": 0}, "cost": {"type": "number", "minimum": 0}}
                ),
                "next": {
                    "type": ["integer", "null"],
                    "description": "The `from` of the next page, when there are more rows than one answer holds.",
                },
            }
        ),
        "Gap": {
            **_object(
                {
                    "from": _UNIX_MS,
                    "to": _UNIX_MS,
                    "kind": {
                        "enum": ["logger_down", "idle", "unknown", "repaired"],
                        "description": (
                            "`logger_down`: no ingest was listening to the serial device;"
                            " `idle`: one was, and the meter did not blink; `unknown`: before"
                            " the first recorded period of ingest (history from before"
                            " blipserver, or imported), when nothing says which; `repaired`:"
                            " no ingest of this node was listening, and the points of the"
                            " stretch are those of the peer logger named by `peer`."
                        ),
                    },
                    "peer": {"type": "string", "description": "The peer of a `repaired` gap."},
                }
            ),
            "required": ["from", "to", "kind"],
        },
        "Repair": _object(
            {
                "from": _UNIX_MS,
                "to": _UNIX_MS,
                "peer": {"type": "string", "description": "The peer logger's URL."},
                "points": {"type": "integer", "minimum": 0, "description": "Points stored from it."},
                "at": {**_UNIX_MS, "description": "When the stretch was repaired."},
            },
            "A stretch when this node's logger was down, filled with a peer logger's points.",
        ),
        "Gaps": _object(
            {
                "meter": {"type": "integer"},
                "from": _UNIX_MS,
                "to": _UNIX_MS,
                "raw_since": {
                    **_RAW_SINCE,
                    "description": _RAW_SINCE["description"] + " Gaps are looked for from there on.",
                },
                "min_gap": {"type": "integer", "minimum": 1, "description": "The threshold used, in ms."},
                "gaps": {"type": "array", "items": _ref("Gap")},
                "repairs": {"type": "array", "items": _ref("Repair")},
                "next": {
                    "type": ["integer", "null"],
                    "description": "The `from` of the next page, when there are more gaps than one answer holds.",
                },
            }
        ),
        "Readings": _object(
            {
                "meter": {"type": "integer"},
                "from": _UNIX_MS,
                "to": _UNIX_MS,
                "raw_since": _RAW_SINCE,
                "points": {
                    "type": "array",
                    "description": "`[stamp, ms]`, oldest first.",
                    "items": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                },
            }
        ),
        "LivePoint": _object(
            {
                "meter": {"type": "integer"},
                "stamp": _UNIX_MS,
                "ms": {"type": "integer", "minimum": 1},
                "watts": _WATTS,
            },
            "The `data` of a `point` event.",
        ),
        "LiveSnapshot": _object({"points": {"type": "array", "items": _ref("LivePoint")}}),
        "Batch": {
            "type": "array",
            "maxItems": WRITE_POINTS,
            "description": (
                "`[stamp, ms]` pairs: unix ms of each blink and ms since the one before, stamps"
                " strictly increasing."
            ),
            "items": {
                "type": "array",
                "prefixItems": [
                    {"type": "integer", "minimum": 0, "maximum": STAMP_MAX},
                    {"type": "integer", "minimum": 1, "maximum": INT_MAX},
                ],
                "minItems": 2,
                "maxItems": 2,
            },
        },
        "Written": _object(
            {
                "stored": {"type": "integer", "minimum": 0, "description": "Points stored."},
                "duplicates": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Points of the batch that were stored already.",
                },
            }
        ),
    }
    parameters = {
        "MeterId": {
            "name": "id",
            "in": "path",
            "required": True,
            "description": "The meter's id.",
            "schema": {"type": "integer", "minimum": 0, "maximum": INT_MAX},
            "example": 1,
        },
        "From": _time("from", "The start of the range (included); 24 hours before `to` by default."),
        "To": _time("to", "The end of the range (left out); now by default."),
    }
    meter_range = [_param("MeterId"), _param("From"), _param("To")]
    paths = {
        "/openapi.json": _get(
            "openapi", "This document", "The OpenAPI document of the API.", [],
            {"application/json": {"schema": {"type": "object"}}},
        ),
        "/meters": _get(
            "listMeters", "Every meter",
            "The configured meters and those with readings, with their newest points.", [],
            {"application/json": {"schema": _ref("Meters")}},
        ),
        "/meters/{id}": _get(
            "getMeter", "One meter", "A meter's settings and its newest point.",
            [_param("MeterId")], {"application/json": {"schema": _ref("Meter")}},
        ),
        "/meters/{id}/power": _get(
            "getPower", "Power in W",
            (
                "Power over the range in at most `max_points` rows: the raw points when they"
                " are few enough, else minute rollups, else hour rollups, else hour rollups"
                " summed into buckets of whole hours. The mean of a bucket is its energy over"
                " its blip intervals; its minimum comes from its longest interval, its maximum"
                " from its shortest."
            ),
            [
                *meter_range,
                {
                    "name": "max_points",
                    "in": "query",
                    "required": False,
                    "description": "The most rows to answer.",
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": POWER_POINTS_CAP,
                        "default": POWER_POINTS,
                    },
                },
            ],
            {"application/json": {"schema": _ref("Power")}},
            raw=True,
        ),
        "/meters/{id}/energy": _get(
            "getEnergy", "Energy and cost per calendar period",
            (
                "kWh and cost of every period of the meter's calendar (its time zone; weeks"
                " start on Monday) that overlaps the range, empty ones as zero rows. Only"
                " blips inside the range count, to the minute: the first and last period may"
                " be partial, and the total is the energy of the range."
                " A day across a daylight-saving change has 23 or 25 hours. Cost follows the"
                " meter's time-of-use tariff, or its `price_per_kwh`."
                f" At most {ENERGY_ROWS} rows; `next` is the `from` of the rest."
            ),
            [
                *meter_range,
                {
                    "name": "period",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": list(PERIODS), "default": DEFAULT_PERIOD},
                },
            ],
            {"application/json": {"schema": _ref("Energy")}},
        ),
        "/meters/{id}/gaps": _get(
            "getGaps", "Stretches without blips",
            (
                "Every stretch of the range (up to now) longer than `min_gap` ms between two"
                " blips, or between the range's edge and a blip, split into the parts when"
                " ingest was not listening (`logger_down`) and when it was but the meter did"
                " not blink (`idle`), or `unknown` before the first recorded period of ingest."
                f" At most {GAP_ROWS} gaps; `next` is the `from` of the rest."
            ),
            [
                *meter_range,
                {
                    "name": "min_gap",
                    "in": "query",
                    "required": False,
                    "description": (
                        "The shortest stretch counted, in ms; by default three times the mean"
                        " blip interval of the range, and at least two minutes. Gaps of two"
                        " minutes or more are found from the minute rollups, quickly for any"
                        f" range; shorter ones (under {ROLLUP_GAP} ms) take reading every point,"
                        f" of {RAW_GAP_SPAN // 86_400_000} days of the range at most per answer:"
                        " `next` is then the `from` of the rest."
                    ),
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_MIN_GAP},
                },
            ],
            {"application/json": {"schema": _ref("Gaps")}},
            raw=True,
        ),
        "/meters/{id}/readings": _get(
            "getReadings", "Every point",
            (
                "Every point of the range, oldest first, streamed without a row cap: as JSON,"
                " or as CSV (`stamp,ms` header) to download; or, with `limit`, the first"
                " points only, a page whatever the range (not a heavy request)."
                + _HEAVY
            ),
            [
                *meter_range,
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": ["json", "csv"], "default": "json"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": (
                        "At most this many points (the first ones); ask again from the last"
                        " stamp + 1 for more. Every point of the range by default."
                    ),
                    "schema": {"type": "integer", "minimum": 1, "maximum": READINGS_LIMIT},
                },
            ],
            {
                "application/json": {"schema": _ref("Readings")},
                "text/csv": {"schema": {"type": "string"}},
            },
            raw=True,
        )
        | _write(),
        "/live": _get(
            "live", "Live points",
            (
                "With `Accept: text/event-stream`: a stream of Server-Sent Events, one"
                " `point` event per new point (`id` is its stamp, `data` a LivePoint), and a"
                f" heartbeat comment every {HEARTBEAT:g} s. A client reconnecting with `Last-Event-ID`"
                " first gets every point of its meters after that stamp (a heavy request"
                f" while it replays: at most {HEAVY_REQUESTS} at once, more get 503 with"
                " `Retry-After`). Without it: the newest point of each meter, as JSON."
            ),
            [
                {
                    "name": "meters",
                    "in": "query",
                    "required": False,
                    "description": "Meter ids separated by commas; every meter by default.",
                    "schema": {
                        "type": "string",
                        "pattern": "^[0-9]{1,10}(,[0-9]{1,10})*$",
                        "maxLength": MAX_VALUE,
                    },
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": (
                        "The `id` of the last event received, to resume after: at most"
                        f" {REPLAY_DEPTH} ms ({REPLAY_DEPTH // 60_000} minutes) before now (400"
                        " further back: open a new stream without it)."
                    ),
                    "schema": {"type": "string", "pattern": f"^{INTEGER}$"},
                },
            ],
            {
                "text/event-stream": {"schema": {"type": "string"}},
                "application/json": {"schema": _ref("LiveSnapshot")},
            },
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "blipserver",
            "version": blip.__version__,
            "description": (
                "Electricity meter readings. Times are unix ms; ranges are half-open"
                " (`from` included, `to` left out); `from`/`to` also take ISO 8601. Every"
                " error is `application/problem+json` with the message in `detail` and"
                " `error`."
            ),
        },
        "servers": [{"url": SERVER}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": parameters,
            "responses": {
                "Problem": {
                    "description": "An error.",
                    "content": {"application/problem+json": {"schema": _ref("Problem")}},
                }
            },
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A device token (`blip token create`), as `Authorization: Bearer"
                        " <token>`; it writes only its meters."
                    ),
                }
            },
        },
    }
