from django.core.checks import run_checks
from django.test import override_settings

STRONG_KEY = "k" * 64
STRONG_TOKEN = "t" * 40


def _ids() -> set[str]:
    return {message.id for message in run_checks()}


def test_short_ingest_token_refused_outside_debug() -> None:
    with override_settings(DEBUG=False, BILLING_INGEST_TOKEN="short-token", SECRET_KEY=STRONG_KEY):
        assert "billing.E001" in _ids()


def test_missing_ingest_token_refused_outside_debug() -> None:
    with override_settings(DEBUG=False, BILLING_INGEST_TOKEN="", SECRET_KEY=STRONG_KEY):
        assert "billing.E001" in _ids()


def test_weak_secret_key_refused_outside_debug() -> None:
    with override_settings(DEBUG=False, BILLING_INGEST_TOKEN=STRONG_TOKEN, SECRET_KEY="django-insecure-abc"):
        assert "billing.E002" in _ids()


def test_strong_secrets_pass() -> None:
    with override_settings(DEBUG=False, BILLING_INGEST_TOKEN=STRONG_TOKEN, SECRET_KEY=STRONG_KEY):
        assert not _ids() & {"billing.E001", "billing.E002"}


def test_debug_tolerates_a_short_token() -> None:
    with override_settings(DEBUG=True, BILLING_INGEST_TOKEN="x", SECRET_KEY=STRONG_KEY):
        assert not _ids() & {"billing.E001", "billing.E002"}


def test_service_refuses_to_start_with_a_short_token(tmp_path) -> None:
    """`manage.py check` (what migrate and gunicorn's start run) exits non-zero with the message."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DEBUG": "false", "BILLING_INGEST_TOKEN": "too-short", "SECRET_KEY": STRONG_KEY}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "BILLING_INGEST_TOKEN must be set to at least 32 characters" in result.stderr
