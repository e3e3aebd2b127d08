"""gunicorn settings: threaded workers so receipt long-polls never starve ingest.

With PROMETHEUS_MULTIPROC_DIR set (several workers share one /metrics), the
master creates that directory and empties it of old per-process files before
the first worker starts (files of dead processes would be summed into the
counters forever), and tells prometheus_client when a worker dies.
"""

import os
from pathlib import Path

from prometheus_client import multiprocess

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
timeout = 60
# Idle kept-alive connections stay open longer than any client keeps them pooled (httpx, the plugin's client:
# 5 s): a server that closes first can close a connection just as the plugin sends an authorize on it.
keepalive = int(os.environ.get("WEB_KEEPALIVE", "65"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
# Ingest bodies of 512 LiteLLM records are several MB: no request line/field limits touch the body.
limit_request_field_size = 16380


def _metrics_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def prepare_metrics_dir(directory: Path) -> None:
    """Create `directory` and delete the per-process metric files (*.db) left in it; nothing else is touched."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    directory = _metrics_dir()
    if directory is not None:
        prepare_metrics_dir(directory)


def child_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    if _metrics_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)
