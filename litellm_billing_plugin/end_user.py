"""Whose end user a call is: the one precedence, shared by the plugin (before the call) and the billing
service's ingest (the record after it), so a hold and its charge name the same end user.

No imports: the billing service imports this module without LiteLLM, the plugin without Django.
"""

# The request header LiteLLM reads the end user from (older versions also leave it in the record's metadata).
END_USER_HEADER = "x-litellm-end-user-id"


def resolve_end_user(
    *, logged: object = None, key_end_user: object = None, header: object = None, body_user: object = None
) -> str | None:
    """The first non-empty string of: what LiteLLM resolved and logged as the end user, the end user of the
    caller's key, the x-litellm-end-user-id header, the request body's `user`; None when there is none."""
    for candidate in (logged, key_end_user, header, body_user):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None
