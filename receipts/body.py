"""Parse an ingest body: LiteLLM's JSON array (default), NDJSON, or one object."""

import json
from typing import Any

from receipts.exactjson import loads_exact
from receipts.usage import UnparseableLine


class BodyError(ValueError):
    """The body cannot be parsed at all (HTTP 400)."""


def parse_ingest_body(body: bytes) -> list[Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not UTF-8: {exc}") from exc
    if not text.strip():
        raise BodyError("body is empty; send a JSON array of LiteLLM records, NDJSON, or one record")
    try:
        data = loads_exact(text)
    except json.JSONDecodeError as exc:
        return _parse_ndjson(text, exc)
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        if not data:
            raise BodyError("empty batch: the JSON array has no records")
        return data
    raise BodyError(f"body must be a JSON array, a JSON object or NDJSON, got a JSON {type(data).__name__}")


def _parse_ndjson(text: str, whole_error: json.JSONDecodeError) -> list[Any]:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) < 2:
        raise BodyError(f"body is not valid JSON: {whole_error}")
    records: list[Any] = []
    for number, line in lines:
        try:
            records.append(loads_exact(line))
        except json.JSONDecodeError as exc:
            records.append(UnparseableLine(line_number=number, error=str(exc), text=line))
    if all(isinstance(r, UnparseableLine) for r in records):
        raise BodyError(f"body is neither JSON nor NDJSON: {whole_error}")
    return records
