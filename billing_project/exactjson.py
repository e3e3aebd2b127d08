"""JSON that keeps numbers exact: floats parse to Decimal and Decimal encodes back as a JSON number.

LiteLLM sends `response_cost` as a JSON number. Parsing it through a binary
float would change the money, so every JSON on the billing path goes through
these two functions (PostgreSQL's jsonb stores numbers as exact numerics).
"""

import json
import re
import secrets
from decimal import Decimal
from typing import Any, Literal

# Decimals are written as a marked string by the C encoder, then unmarked by one
# regex pass. The random nonce keeps any string a client sends from posing as a mark.
_NONCE = secrets.token_hex(8)
_MARK = f"\x00dec{_NONCE}:"
_MARKED = re.compile(r'"\\u0000dec' + _NONCE + r':([^"]*)"')
# A NUL that is data (not an escaped backslash before "u0000"): jsonb cannot store it.
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _reject_constant(name: str) -> Decimal:
    # NaN and ±Infinity are not JSON; keep them as a Decimal the validator will refuse.
    return Decimal(name.replace("Infinity", "Inf"))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# What loads_exact does with NaN and ±Infinity (not JSON, but Python's json reads them).
_CONSTANTS = {"decimal": _reject_constant, "refuse": _refuse_constant, "text": str}


def loads_exact(text: str | bytes, *, constants: Literal["decimal", "refuse", "text"] = "decimal") -> Any:
    """The one exact-JSON parser: numbers with a fraction or exponent become Decimal from their digits.

    `constants`: "decimal" keeps NaN/Infinity as a Decimal a validator refuses, "refuse" raises ValueError,
    "text" keeps them as the strings "NaN"/"Infinity" (a judge then refuses them where money belongs).
    """
    return json.loads(text, parse_float=Decimal, parse_constant=_CONSTANTS[constants])


def _mark_decimal(value: Any) -> str:
    if isinstance(value, Decimal):
        return _MARK + str(value) if value.is_finite() else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps_exact(value: Any, *, for_jsonb: bool = True) -> str:
    """json.dumps that writes each Decimal as the JSON number it was parsed from.

    For jsonb (the default) a NUL in a string becomes U+FFFD, which jsonb can store.
    """
    text = _MARKED.sub(r"\1", json.dumps(value, ensure_ascii=False, default=_mark_decimal))
    return _NUL.sub(r"\1\\ufffd", text) if for_jsonb and "\\u0000" in text else text


class ExactJSONEncoder(json.JSONEncoder):
    """For Django's JSONField: Decimals become JSON numbers, digit for digit."""

    def encode(self, o: Any) -> str:
        return dumps_exact(o)


class ExactJSONDecoder(json.JSONDecoder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parse_float"] = Decimal
        kwargs["parse_constant"] = _reject_constant
        super().__init__(*args, **kwargs)
