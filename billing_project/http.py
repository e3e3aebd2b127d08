"""Reading a raw request body with a size limit, chunked bodies included.

Django sizes the body by Content-Length alone: without one it reads nothing, so
a chunked POST (`Transfer-Encoding: chunked`, no Content-Length) looks empty.
A WSGI server that de-chunks the body and ends the stream at its end says so
with `wsgi.input_terminated` (gunicorn does); then the stream can be read to
its end. Without that promise a chunked body cannot be read safely: 411.
"""

import re
from typing import Protocol

from django.http import HttpRequest

_CHUNK_BYTES = 64 * 1024
_DIGITS = re.compile(r"[0-9]+")
# More digits than this is over any limit: no need to convert the number.
_MAX_LENGTH_DIGITS = 18


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class RequestBodyError(Exception):
    """A body that cannot be read: the HTTP status to answer and the field to name."""

    status_code = 400
    field = "body"


class BodyTooLarge(RequestBodyError):
    status_code = 413


class LengthRequired(RequestBodyError):
    status_code = 411
    field = "Content-Length"


class BadContentLength(RequestBodyError):
    field = "Content-Length"


class IncompleteBody(RequestBodyError):
    pass


def read_request_body(request: HttpRequest, *, limit: int, limit_name: str = "") -> bytes:
    """The whole body, at most `limit` bytes (`limit_name`, the setting, is named in the 413 message).

    Raises BadContentLength (400) for a Content-Length that is not a number,
    BodyTooLarge (413) above `limit`, IncompleteBody (400) when the body ends
    before its Content-Length, LengthRequired (411) for a chunked body the
    server does not terminate.
    """
    declared = request.META.get("CONTENT_LENGTH")
    if declared not in (None, ""):
        return _read_declared(request, declared=str(declared).strip(), limit=limit, limit_name=limit_name)
    if request.META.get("wsgi.input_terminated"):
        return _read_to_end(request.META["wsgi.input"], limit=limit, limit_name=limit_name)
    if request.META.get("HTTP_TRANSFER_ENCODING"):
        raise LengthRequired(
            "a body without Content-Length can only be read when the server terminates it "
            "(gunicorn does); send a Content-Length"
        )
    return b""  # HTTP/1.1: no Content-Length and no Transfer-Encoding means no body


def _over(limit: int, limit_name: str) -> str:
    return f"the limit of {limit} bytes" + (f" ({limit_name})" if limit_name else "")


def _read_declared(request: HttpRequest, *, declared: str, limit: int, limit_name: str) -> bytes:
    if not _DIGITS.fullmatch(declared):
        raise BadContentLength(f"Content-Length is not a number: {declared[:40]!r}")
    if len(declared) > _MAX_LENGTH_DIGITS or int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes is over {_over(limit, limit_name)}")
    length = int(declared)
    # request.read() is bounded by Content-Length; a stream may hand out less per call.
    parts: list[bytes] = []
    received = 0
    while received < length:
        part = request.read(length - received)
        if not part:
            raise IncompleteBody(f"body ended after {received} of {length} bytes (Content-Length)")
        parts.append(part)
        received += len(part)
    return b"".join(parts)


def _read_to_end(stream: _Readable, *, limit: int, limit_name: str) -> bytes:
    parts: list[bytes] = []
    received = 0
    while received <= limit:
        part = stream.read(min(_CHUNK_BYTES, limit + 1 - received))
        if not part:
            return b"".join(parts)
        parts.append(part)
        received += len(part)
    raise BodyTooLarge(f"body is over {_over(limit, limit_name)}")
