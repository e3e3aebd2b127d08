"""`bin/run`: one command from a fresh clone to a running service.

Starts an embedded PostgreSQL when DATABASE_URL is not set (data under
.data/postgres), writes a git-ignored .env with generated secrets on first
run, migrates, creates a demo account and an admin login (printed), then runs
gunicorn on 127.0.0.1:8000 plus the deferred-usage worker: Celery worker and
beat when CELERY_BROKER_URL is set, `manage.py billing_worker` otherwise.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from billing_project.embedded_pg import start_embedded_postgres
from billing_project.scopes import SCOPE_SETTINGS

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / ".data"


def _ensure_env_file() -> None:
    env_file = BASE_DIR / ".env"
    if env_file.exists():
        return
    tokens = "".join(f"{setting}={secrets.token_urlsafe(48)}\n" for setting in SCOPE_SETTINGS.values())
    env_file.write_text(
        "# Written by bin/run on first start (git-ignored). See .env.example for every setting.\n"
        f"SECRET_KEY={secrets.token_urlsafe(64)}\n{tokens}"
    )
    env_file.chmod(0o600)
    print(f"bin/run: wrote {env_file} with a generated SECRET_KEY and one token per scope")


def main() -> int:
    os.chdir(BASE_DIR)
    DATA_DIR.mkdir(exist_ok=True)
    _ensure_env_file()
    env = os.environ.copy()
    # bin/run serves plain http on 127.0.0.1: no HTTPS redirect, cookies not Secure-only
    # (README, "Production settings"); the environment still wins.
    for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        env.setdefault(name, "false")
    # The local demo may send its webhooks to a receiver on this machine (production refuses private addresses).
    env.setdefault("BILLING_WEBHOOKS_ALLOW_PRIVATE", "true")
    server = None
    if not env.get("DATABASE_URL"):
        server, env["DATABASE_URL"] = start_embedded_postgres(data_dir=DATA_DIR / "postgres")
        print(f"bin/run: embedded PostgreSQL at {env['DATABASE_URL']}")
    metrics_dir = DATA_DIR / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    python = sys.executable
    manage = [python, "manage.py"]
    for step in (["migrate", "--noinput", "-v", "1"], ["collectstatic", "--noinput", "-v", "0"], ["billing_demo"]):
        subprocess.run(manage + step, env=env, check=True)

    bind = env.get("BIND", "127.0.0.1:8000")
    procs = [
        subprocess.Popen(
            [python, "-m", "gunicorn", "billing_project.wsgi", "-c", "billing_project/gunicorn.conf.py", "-b", bind],
            env=env,
        )
    ]
    if env.get("CELERY_BROKER_URL"):
        procs.append(
            subprocess.Popen(
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "billing_project",
                    "worker",
                    "-B",
                    "-l",
                    "info",
                    "-s",
                    str(DATA_DIR / "celerybeat-schedule"),
                ],
                env=env,
            )
        )
    else:
        procs.append(subprocess.Popen([*manage, "billing_worker"], env=env))
    print(f"bin/run: serving on http://{bind}/ (Ctrl-C stops everything)")

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        # The first child to exit takes the others (and the embedded database) down with it.
        os.wait()
    except (ChildProcessError, InterruptedError):
        pass
    stop()
    code = 0
    for proc in procs:
        code = code or proc.wait()
    del server
    return code


if __name__ == "__main__":
    sys.exit(main())
