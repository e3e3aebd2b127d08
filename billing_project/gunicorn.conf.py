"""gunicorn settings: threaded workers so receipt long-polls never starve ingest."""

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
timeout = 60
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
# Ingest bodies of 512 LiteLLM records are several MB: no request line/field limits touch the body.
limit_request_field_size = 16380


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
