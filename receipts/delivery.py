"""Split an ingest body into its records' raw JSON, without building them.

LiteLLM sends a JSON array (default), NDJSON (`log_format: ndjson`) or one
object (`single`). Each element is returned as its own bytes so that it is
decoded and judged alone (integrations.litellm.records): one hostile record (NaN, nesting
thousands deep, a huge number) costs only itself, never its neighbours.
"""

import json
import re

import msgspec


class BodyError(ValueError):
    """The body cannot be parsed at all (HTTP 400)."""


_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_ONE = msgspec.json.Decoder(msgspec.Raw)
# Structural characters and string starts, for the tolerant splitter below.
_STRUCTURE = re.compile(rb'["\[\]{},]')
_STRING_TAIL = re.compile(rb'(?:[^"\\]++|\\.)*+"', re.S)


def split_delivery(body: bytes) -> list[bytes]:
    """The raw JSON of each record of a delivery, in order. Raises BodyError for an unusable body."""
    text = body.removeprefix(b"\xef\xbb\xbf").strip()
    if not text:
        raise BodyError("body is empty; send a JSON array of LiteLLM records, NDJSON, or one record")
    if text[:1] == b"[":
        try:
            records = _split_array(text)
        except BodyError:
            lines = _lines(text)
            if len(lines) > 1:
                return lines  # NDJSON whose first record is an array (kept as invalid, alone)
            raise
        if not records:
            raise BodyError("empty batch: the JSON array has no records")
        return records
    lines = _lines(text)
    if len(lines) > 1 and not _one_value(text):
        return lines  # NDJSON: each line a record, judged alone
    return [_single(text)]


def _lines(text: bytes) -> list[bytes]:
    """The non-blank lines of an NDJSON body."""
    return [line for line in (raw.strip() for raw in text.splitlines()) if line]


def _single(text: bytes) -> bytes:
    if text[:1] != b"{":
        raise BodyError(_not_an_object(text))
    try:
        _ONE.decode(text)
    except msgspec.DecodeError as exc:
        # Python's parser also reads NaN and lone surrogates: such a record is judged (and kept), not refused.
        try:
            json.loads(text)
        except RecursionError:
            pass
        except ValueError:
            raise BodyError(f"body is not valid JSON: {exc}") from exc
    except RecursionError:
        pass  # syntactically a record, too deep to build: judged (and kept) as an invalid record
    return text


def _not_an_object(text: bytes) -> str:
    """The 400 message of a body that is no object (never raises: NaN, lone surrogates, garbage)."""
    try:
        _ONE.decode(text)
    except msgspec.DecodeError as exc:
        return f"body is not valid JSON: {exc}"
    except RecursionError:
        return "body is not valid JSON: it nests too deep"
    kind = type(json.loads(text)).__name__ if len(text) < 4096 else "value"
    return f"body must be a JSON array, a JSON object or NDJSON, got a JSON {kind}"


def _one_value(text: bytes) -> bool:
    """True when the whole body is one JSON value (e.g. a pretty-printed object spanning lines)."""
    try:
        _ONE.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def _split_array(text: bytes) -> list[bytes]:
    try:
        return [bytes(raw) for raw in _ARRAY.decode(text)]
    except (msgspec.DecodeError, RecursionError) as exc:
        # Something inside is not strict JSON (NaN) or nests too deep for the fast path:
        # split by structure alone, so each element is judged on its own.
        records = _split_array_tolerant(text)
        if records is None:
            raise BodyError(f"body is not valid JSON: {exc}") from exc
        return records


def _split_array_tolerant(text: bytes) -> list[bytes] | None:
    """Top-level elements of a JSON array by bracket depth, skipping strings; None if unbalanced."""
    elements: list[bytes] = []
    depth, pos, start = 1, 1, 1
    while True:
        match = _STRUCTURE.search(text, pos)
        if match is None:
            return None
        char = text[match.start()]
        pos = match.end()
        if char == 0x22:  # '"'
            tail = _STRING_TAIL.match(text, pos)
            if tail is None:
                return None
            pos = tail.end()
        elif char in b"[{":
            depth += 1
        elif char in b"]}":
            depth -= 1
            if depth == 0:
                last = text[start : match.start()].strip()
                if last:
                    elements.append(last)
                elif elements:
                    return None  # a trailing comma
                return None if text[pos:].strip() else elements
        elif depth == 1:  # a top-level comma
            elements.append(text[start : match.start()].strip())
            start = pos
