"""
Errors and their answers: the one table from an error to a status and a
message, rendered as the legacy routes' ``{"error": message}`` or, under
``/api/v1``, as an ``application/problem+json`` document (RFC 9457) whose
``error`` repeats its ``detail``.
"""

from http import HTTPStatus
from typing import Optional

import psycopg2.errors
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from blip.db.pool import RETRIABLE, QueryCancelled
from blip.live.hub import TooManyWaiters
from blip.web.answers import (
    V1_PREFIX,
    HeaderPairs,
    Style,
    dress,
    encode,
    json_answer,
    json_body,
)
from blip.web.twisted_private import started_writing


class ApiError(Exception):
    """
    An error answered with its own status code and message.
    """

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    """The request's numbers or parameters are not acceptable."""

    status = 400


class NotFound(ApiError):
    """The request names something that does not exist."""

    status = 404


class Unauthorized(ApiError):
    """No credentials, or some that authorise nothing."""

    status = 401


class Forbidden(ApiError):
    """Credentials that do not authorise this."""

    status = 403


class Unsupported(ApiError):
    """A body of a media type the route does not read."""

    status = 415


class Busy(ApiError):
    """Too many clients of some kind; try again later."""

    status = 503


#: Every other error that is not a bug, with its status and message, in
#: the order they are looked for.
TABLE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str], ...] = (
    (TooManyWaiters, 503, "too many long-poll clients; try again later"),
    # The server ended a query at the statement timeout (--query-timeout).
    (QueryCancelled, 503, "the query took longer than this server allows; ask for less"),
    (RETRIABLE, 503, "database unavailable; try again later"),
    # A node serving a database whose schema another node (or this one,
    # still starting) has yet to create.
    (psycopg2.errors.UndefinedTable, 503, "database not prepared yet; try again later"),
    (CancelledError, 503, "shutting down"),
)


def describe(failure: Failure) -> tuple[int, str]:
    """
    The one table from errors to answers.

    :return: the status code and message for ``failure``; 500 means a bug.
    """
    error = failure.value
    if isinstance(error, ApiError):
        return error.status, error.message
    if isinstance(error, HTTPException):
        # The router's: no route, or not with that method.
        if error.code == 404:
            return 404, "no such route"
        if error.code == 405:
            return 405, "method not allowed"
        return error.code or 400, error.name
    for kinds, status, message in TABLE:
        if isinstance(error, kinds):
            return status, message
    return 500, "internal error"


def legacy_body(message: str) -> bytes:
    """
    :return: the legacy routes' JSON body of an error.
    """
    return encode({"error": message})


def problem(status: int, message: str) -> bytes:
    """
    :return: the ``application/problem+json`` body (RFC 9457) of an error
        of ``/api/v1``; ``error`` repeats ``detail``, as the legacy routes
        name it.
    """
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return encode({"type": "about:blank", "title": title, "status": status, "detail": message, "error": message})


def error_body(status: int, message: str, problems: bool) -> tuple[bytes, bytes]:
    """
    :param problems: whether the error is a problem document (under
        ``/api/v1``), else a legacy JSON error.
    :return: the body of an error and its media type.
    """
    if problems:
        return problem(status, message), b"application/problem+json"
    return legacy_body(message), b"application/json"


def error_answer(
    status: int, message: str, headers: HeaderPairs, now: float, problems: bool = False
) -> bytes:
    """
    :param headers: its CORS, caching and other headers, in order.
    :param now: the unix time it is dated.
    :return: the whole HTTP/1.1 answer of an error, as :func:`refuse`
        has Twisted Web write it on a keep-alive connection.
    """
    body, media = error_body(status, message, problems)
    return json_answer(status, headers, body, now, media)


def refuse(
    request: IRequest, status: int, message: str, problems: Optional[bool] = None
) -> bytes:
    """
    Answer ``request`` with an error.

    :param problems: whether to answer a problem document, else the legacy
        ``{"error": message}``; by default, whether the request is under
        ``/api/v1``.
    :return: the body to render (empty for HEAD).
    """
    request.setResponseCode(status)
    if problems is None:
        problems = (getattr(request, "path", None) or b"").startswith(V1_PREFIX)
    return json_body(request, *error_body(status, message, problems))


def judge(failure: Failure, log: Logger, uri: bytes, cut_short: bool = False) -> tuple[int, str]:
    """
    :param uri: the failed request's target, for the log.
    :param cut_short: whether its answer was under way, and is cut short.
    :return: the status code and message for ``failure``
        (:func:`describe`); a 500 (a bug) is logged with its traceback,
        an answer cut short for another reason with a warning.
    """
    status, message = describe(failure)
    if status == 500:
        log.failure("error answering {uri}", failure, uri=uri)
    elif cut_short:
        log.warn("answer to {uri} cut short: {why}", uri=uri, why=message)
    return status, message


def answer_error(
    request: IRequest, failure: Failure, log: Logger, style: Optional[Style] = None
) -> Optional[bytes]:
    """
    Answer a failed request from the one error table, with the headers of
    ``style``; a 500 (a bug) is logged with its traceback. An answer
    already under way cannot turn into an error: its connection is cut, so
    that the client sees a truncated answer, not a complete one.

    :return: the body to render, or None when the connection was cut.
    """
    started = started_writing(request)
    status, message = judge(failure, log, request.uri, started)
    if started:
        # A TCP or TLS connection, though ITransport names no abortConnection.
        request.transport.abortConnection()  # type: ignore[attr-defined]
        return None
    if style is None:
        return refuse(request, status, message)
    dress(request, style)
    if style.allow is not None and failure.check(MethodNotAllowed):
        request.setHeader(b"Allow", style.allow)
    return refuse(request, status, message, style.problems)
