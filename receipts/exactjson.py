"""JSON that keeps numbers exact: floats parse to Decimal and Decimal encodes back as a JSON number.

LiteLLM sends `response_cost` as a JSON number. Parsing it through a binary
float would change the money, so every JSON on the billing path goes through
these two functions (PostgreSQL's jsonb stores numbers as exact numerics).
"""

import json
import re
from decimal import Decimal
from typing import Any

_MARK = "\x00dec:"
_MARKED = re.compile(r'"\\u0000dec:([^"]*)"')


class NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> Decimal:
    # NaN and ±Infinity are not JSON; keep them as a Decimal the validator will refuse.
    return Decimal(name.replace("Infinity", "Inf"))


def loads_exact(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)


def _mark(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        return _MARK + str(value)
    if isinstance(value, str):
        # PostgreSQL's jsonb cannot store NUL; dropping it also keeps the marker unambiguous.
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_mark(k): _mark(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark(v) for v in value]
    return value


def dumps_exact(value: Any) -> str:
    """json.dumps that writes each Decimal as the JSON number it was parsed from."""
    return _MARKED.sub(r"\1", json.dumps(_mark(value), ensure_ascii=False))


class ExactJSONEncoder(json.JSONEncoder):
    """For Django's JSONField: Decimals become JSON numbers, digit for digit."""

    def encode(self, o: Any) -> str:
        return dumps_exact(o)


class ExactJSONDecoder(json.JSONDecoder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parse_float"] = Decimal
        kwargs["parse_constant"] = _reject_constant
        super().__init__(*args, **kwargs)
