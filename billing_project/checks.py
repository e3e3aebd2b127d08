"""System checks that stop the service outside DEBUG when a secret is missing or weak."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured

from billing_project.scopes import SCOPE_SETTINGS, TokenScope

MIN_TOKEN_LENGTH = 32
MIN_SECRET_KEY_LENGTH = 50


@register(deploy=False)
def check_secrets(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if settings.DEBUG:
        return []
    errors = []
    token = settings.BILLING_INGEST_TOKEN
    if len(token) < MIN_TOKEN_LENGTH:
        errors.append(
            Error(
                f"BILLING_INGEST_TOKEN must be set to at least {MIN_TOKEN_LENGTH} characters "
                f"outside DEBUG (it is {len(token)}).",
                hint="Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'",
                id="billing.E001",
            )
        )
    for scope, setting in SCOPE_SETTINGS.items():
        value = getattr(settings, setting)
        if scope is not TokenScope.INGEST and value and len(value) < MIN_TOKEN_LENGTH:
            errors.append(
                Error(
                    f"{setting} must be at least {MIN_TOKEN_LENGTH} characters when it is set (it is {len(value)}).",
                    id="billing.E003",
                )
            )
    try:
        secret_key = settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses to hand out an empty key
        secret_key = ""
    if len(secret_key) < MIN_SECRET_KEY_LENGTH or secret_key.startswith("django-insecure"):
        errors.append(
            Error(
                f"SECRET_KEY must be set to a random value of at least {MIN_SECRET_KEY_LENGTH} "
                "characters outside DEBUG.",
                hint="Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(64))'",
                id="billing.E002",
            )
        )
    return errors


@register(deploy=False)
def check_scoped_tokens(app_configs: Any = None, **kwargs: Any) -> list[CheckWarning]:
    """An unset scoped token falls back to BILLING_INGEST_TOKEN: it works, but one secret then does everything."""
    if settings.DEBUG:
        return []
    return [
        CheckWarning(
            f"{setting} is not set: its endpoints accept BILLING_INGEST_TOKEN, so whoever holds LiteLLM's "
            "callback token can also call them.",
            hint=f"Set {setting} to its own random value (README, 'Tokens') and give it only to its caller.",
            id="billing.W001",
        )
        for scope, setting in SCOPE_SETTINGS.items()
        if scope is not TokenScope.INGEST and not getattr(settings, setting)
    ]
