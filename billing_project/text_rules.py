"""Rules about text that every surface applies alike (no Django, no app imports).

- `control_character_problem`: text that names something (a call id, run id, key hash, team, end user)
  holds no control character (Unicode category Cc, NUL included) and no lone surrogate (Cs): neither
  can be logged, shown or stored faithfully. Ingest, the bindings API, the admin and authorize use it.
- `call_id_problem`: what makes a call id unusable. Authorize (before the call), ingest (after it) and
  the receipt lookup refuse exactly the same call ids, so a call that could not be billed is refused
  before it runs, never served and then dropped.
"""

import unicodedata

# The column size of every litellm_call_id (receipts, deferrals, holds).
CALL_ID_MAX_LENGTH = 255


def control_character_problem(value: str) -> str | None:
    """Why `value` cannot name anything, or None."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        return "must not contain control characters"
    return None


def call_id_problem(value: str) -> str | None:
    """Why `value` cannot be a litellm_call_id, or None.

    Not empty, at most CALL_ID_MAX_LENGTH characters, no control characters, and no "/": a charge's
    source reference "{run_id}/{attempt}/{litellm_call_id}" is read from the right.
    """
    if not value:
        return "must not be empty"
    if len(value) > CALL_ID_MAX_LENGTH:
        return f"is {len(value)} characters long; at most {CALL_ID_MAX_LENGTH} fit"
    if "/" in value:
        return "must not contain '/'"
    return control_character_problem(value)
