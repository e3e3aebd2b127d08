"""A loopback HTTP stand-in of LiteLLM 1.108.7's spend-log API.

LiteLLM's own spend-log endpoints need its database layer, whose engine
binaries it downloads at install, so they cannot run here. This serves rows of
exactly the shape the pinned source defines
(.venv-litellm/.../litellm/proxy/spend_tracking/spend_management_endpoints.py,
`LiteLLM_SpendLogs` in litellm/proxy/schema.prisma, the payload built in
spend_tracking_utils.get_logging_payload):

- `GET /spend/logs?request_id=X`: the whole rows whose request_id or
  litellm_call_id is X, newest first, `metadata` as the JSON string LiteLLM stores.
- `GET /spend/logs/v2?start_date=&end_date=&page=&page_size=&sort_by=startTime&sort_order=`:
  `{"data", "total", "page", "page_size", "total_pages", "total_is_capped"}` with
  the `_SPEND_LOG_LIST_COLUMNS` of each row (metadata hydrated into an
  object), `start_date`/`end_date` inclusive ("YYYY-MM-DD[ HH:MM:SS]", UTC),
  `page_size` at most 1000, OFFSET pages ordered by startTime alone, and
  `total` capped at 10,000 (`total_is_capped`). With `end_user=X` only the rows
  whose end_user equals X are paged and counted (LiteLLM adds `end_user = $n`
  to the WHERE clause of both queries; an empty X matches rows without one).
- `Authorization: Bearer <master key>`, else 401 like LiteLLM's auth.

Test hooks: `fail_next()` answers the next requests with an error status,
`unstable_ties` shuffles rows with equal startTime on every request (as
PostgreSQL may when the sort has ties), `count_cap` lowers the cap.
A row source can be swapped for one that builds pages elsewhere (the
benchmark serves them from PostgreSQL).
"""

import json
import random
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from billing_project.exactjson import dumps_exact, loads_exact

COUNT_CAP = 10_000
PAGE_SIZE_MAX = 1000
MASTER_KEY = "sk-standin-master-key"

# _SPEND_LOG_LIST_COLUMNS of the pinned source, in its order.
LIST_COLUMNS = (
    "request_id",
    "call_type",
    "api_key",
    "spend",
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "startTime",
    "endTime",
    "completionStartTime",
    "model",
    "model_id",
    "model_group",
    "custom_llm_provider",
    "api_base",
    "user",
    "metadata",
    "cache_hit",
    "cache_key",
    "request_tags",
    "team_id",
    "organization_id",
    "end_user",
    "requester_ip_address",
    "session_id",
    "status",
    "mcp_namespaced_tool_name",
    "agent_id",
    "litellm_call_id",
    "request_duration_ms",
)
API_KEY_HASH = "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"


def spend_logs_metadata(
    *,
    litellm_call_id: str,
    status: str = "success",
    spend_logs_metadata: dict[str, Any] | None = None,
    key_alias: str | None = None,
    team_id: str | None = None,
    cost: Decimal | None = None,
    api_key: str = API_KEY_HASH,
) -> dict[str, Any]:
    """SpendLogsMetadata as get_logging_payload() fills it for a proxy call (the keys of the pinned TypedDict)."""
    return {
        "additional_usage_values": {},
        "user_api_key": api_key,
        "user_api_key_alias": key_alias,
        "user_api_key_team_id": team_id,
        "user_api_key_project_id": None,
        "user_api_key_project_alias": None,
        "user_api_key_org_id": None,
        "user_api_key_user_id": "default_user_id",
        "user_api_key_team_alias": None,
        "spend_logs_metadata": spend_logs_metadata,
        "requester_ip_address": "127.0.0.1",
        "user_agent": "python-httpx/0.28.1",
        "litellm_call_id": litellm_call_id,
        "applied_guardrails": [],
        "mcp_tool_call_metadata": None,
        "vector_store_request_metadata": None,
        "routing_decision": None,
        "internal_call_origin": None,
        "billed_retry_attempt": False,
        "litellm_roi_estimator": False,
        "guardrail_information": None,
        "eval_information": None,
        "status": status,
        "proxy_server_request": None,
        "batch_models": None,
        "batch_successful_requests": None,
        "batch_failed_requests": None,
        "error_information": {
            "error_code": "",
            "error_class": "",
            "llm_provider": "",
            "traceback": "",
            "error_message": "",
        },
        "usage_object": {"completion_tokens": 20, "prompt_tokens": 10, "total_tokens": 30},
        "model_map_information": {
            "model_map_key": "gpt-4o-mini",
            "model_map_value": {"input_cost_per_token": Decimal("1.5e-07"), "output_cost_per_token": Decimal("6e-07")},
        },
        "cold_storage_object_key": None,
        "litellm_overhead_time_ms": None,
        "attempted_retries": 0,
        "max_retries": None,
        "attempted_fallbacks": 0,
        "original_model_group": None,
        "cost_breakdown": None if cost is None else {"input_cost": None, "output_cost": None, "total_cost": cost},
        "compression_savings": None,
        "autorouter_savings": None,
        "autorouter_savings_estimate": None,
        "autorouter_baseline_observation": None,
        "litellm_gateway_injected_cache": None,
        "router_metadata": None,
        "azure_spillover": None,
        "used_client_oauth_token": False,
    }


def spend_log_row(
    *,
    litellm_call_id: str | None = None,
    request_id: str | None = None,
    spend: Decimal | int | None = Decimal("0.0000135"),
    end_user: str = "acct-alice",
    start_time: datetime | None = None,
    status: str = "success",
    model_group: str = "gpt-4o-mini",
    spend_logs_meta: dict[str, Any] | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
    cache_hit: bool = False,
    api_key: str = API_KEY_HASH,
    team_id: str = "",
    end_time: datetime | None = None,
) -> dict[str, Any]:
    """One stored LiteLLM_SpendLogs row (as SpendLogsPayload: metadata and request_tags are JSON strings).

    api_key is the hash LiteLLM logs for the caller's key, team_id its team ("" for none).
    """
    call_id = litellm_call_id if litellm_call_id is not None else str(uuid.uuid4())
    start = start_time or datetime.now(UTC) - timedelta(hours=1)
    return {
        "request_id": request_id or f"chatcmpl-{uuid.uuid4()}",
        "call_type": "acompletion",
        "api_key": api_key,
        "spend": spend,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "startTime": start,
        "endTime": end_time or start + timedelta(milliseconds=250),
        "completionStartTime": start + timedelta(milliseconds=250),
        "request_duration_ms": 250,
        "model": "openai/gpt-4o-mini",
        "model_id": "3298353453c8eb9c2c4bce304f4c954ed4de8ff537fe27095f2f487c318a4319",
        "model_group": model_group,
        "custom_llm_provider": "openai",
        "api_base": "https://api.openai.com",
        "user": "default_user_id",
        "metadata": dumps_exact(
            spend_logs_metadata(
                litellm_call_id=call_id,
                status=status,
                spend_logs_metadata=spend_logs_meta,
                team_id=team_id or None,
                cost=None if spend is None else Decimal(spend),
                api_key=api_key,
            )
        ),
        "cache_hit": str(cache_hit),
        "cache_key": "Cache OFF",
        "request_tags": json.dumps(["User-Agent: python-httpx", "User-Agent: python-httpx/0.28.1"]),
        "team_id": team_id,
        "organization_id": "",
        "end_user": end_user,
        "requester_ip_address": "127.0.0.1",
        "messages": "{}",
        "response": "{}",
        "session_id": str(uuid.uuid4()),
        "status": status,
        "mcp_namespaced_tool_name": None,
        "billing_agent_id": None,
        "agent_id": None,
        "proxy_server_request": "{}",
        "litellm_call_id": litellm_call_id if litellm_call_id is not None else call_id,
        "created_at": start,
        "updated_at": start,
    }


def _wire(value: Any) -> Any:
    """Values as FastAPI's JSON encoder writes them (datetimes in ISO 8601)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def list_row(row: dict[str, Any]) -> dict[str, Any]:
    """A v2 row: the list columns, metadata hydrated from its JSON string (_hydrate_spend_log_metadata)."""
    out = {column: _wire(row.get(column)) for column in LIST_COLUMNS}
    if isinstance(out["metadata"], str):
        try:
            out["metadata"] = loads_exact(out["metadata"])
        except ValueError:
            out["metadata"] = {}
    return out


class RowSource(Protocol):
    def page(
        self,
        *,
        start: datetime,
        end: datetime,
        ascending: bool,
        offset: int,
        limit: int,
        cap: int,
        end_user: str | None = None,
    ) -> tuple[bytes, int]:
        """(the JSON array of the page's list rows, the count of matches up to cap + 1); end_user: equal to it."""

    def by_request_id(self, key: str) -> bytes:
        """The JSON array of whole rows whose request_id or litellm_call_id is `key`."""


class MemorySource:
    """Rows kept in a list (tests)."""

    def __init__(self, standin: "SpendLogStandIn") -> None:
        self.standin = standin

    def page(
        self,
        *,
        start: datetime,
        end: datetime,
        ascending: bool,
        offset: int,
        limit: int,
        cap: int,
        end_user: str | None = None,
    ) -> tuple[bytes, int]:
        with self.standin.lock:
            matches = [
                r
                for r in self.standin.rows
                if start <= r["startTime"] <= end and (end_user is None or r["end_user"] == end_user)
            ]
        if self.standin.unstable_ties:
            random.Random(self.standin.requests_served).shuffle(matches)
        matches.sort(key=lambda r: r["startTime"], reverse=not ascending)
        rows = [list_row(r) for r in matches[offset : offset + limit]]
        return dumps_exact(rows).encode(), min(len(matches), cap + 1)

    def by_request_id(self, key: str) -> bytes:
        with self.standin.lock:
            rows = [r for r in self.standin.rows if key in (r["request_id"], r["litellm_call_id"])]
        rows.sort(key=lambda r: r["startTime"], reverse=True)
        return dumps_exact([{k: _wire(v) for k, v in r.items()} for r in rows]).encode()


def _parse_date(text: str | None) -> datetime | None:
    if text is None:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(text)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "bad_request") -> None:
        body = {"error": {"message": message, "type": kind, "param": "None", "code": str(status)}}
        self._send(status, json.dumps(body).encode())

    def do_GET(self) -> None:
        standin = self.server.standin
        url = urlsplit(self.path)
        # keep_blank_values: FastAPI passes `end_user=` on as "" (a filter), not as absent.
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with standin.lock:
            standin.requests_served += 1
            standin.requests.append((url.path, params))
            failure = standin.failures.pop(0) if standin.failures else None
        if failure is not None:
            self._error(failure, "stand-in failure", "internal_error")
            return
        if self.headers.get("Authorization") != f"Bearer {standin.master_key}":
            self._error(401, "Authentication Error, Invalid proxy server token passed.", "auth_error")
            return
        if url.path == "/spend/logs":
            key = params.get("request_id")
            if key is None:
                self._error(400, "the stand-in serves /spend/logs by request_id only")
                return
            self._send(200, standin.source.by_request_id(key))
        elif url.path == "/spend/logs/v2":
            self._v2(standin, params)
        else:
            self._error(404, "Not Found", "not_found")

    def _v2(self, standin: "SpendLogStandIn", params: dict[str, str]) -> None:
        try:
            start, end = _parse_date(params.get("start_date")), _parse_date(params.get("end_date"))
        except ValueError as exc:
            self._error(400, f"Invalid date format: {exc}. Expected: 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM:SS'")
            return
        if start is None or end is None:
            self._error(400, "Start date and end date are required")
            return
        page, page_size = int(params.get("page", 1)), int(params.get("page_size", 50))
        if page < 1 or not 1 <= page_size <= PAGE_SIZE_MAX:
            self._error(422, "page must be >= 1 and page_size between 1 and 1000", "validation_error")
            return
        if params.get("sort_by", "startTime") != "startTime":
            self._error(400, "the stand-in sorts by startTime only")
            return
        ascending = (params.get("sort_order") or "desc").lower() == "asc"
        data, count = standin.source.page(
            start=start,
            end=end,
            ascending=ascending,
            offset=(page - 1) * page_size,
            limit=page_size,
            cap=standin.count_cap,
            end_user=params.get("end_user"),
        )
        capped = count > standin.count_cap
        total = standin.count_cap if capped else count
        tail = json.dumps(
            {
                "total": total,
                "page": page,
                "page_size": page_size,
                "total_pages": (total + page_size - 1) // page_size,
                "total_is_capped": capped,
            }
        )
        self._send(200, b'{"data": ' + data + b", " + tail[1:].encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: "SpendLogStandIn"


class SpendLogStandIn:
    """Serve spend-log rows on 127.0.0.1 (an ephemeral port) until stop()."""

    def __init__(
        self,
        *,
        rows: Iterable[dict[str, Any]] = (),
        master_key: str = MASTER_KEY,
        count_cap: int = COUNT_CAP,
        source: RowSource | None = None,
        port: int = 0,
    ) -> None:
        self.lock = threading.Lock()
        self.rows: list[dict[str, Any]] = list(rows)
        self.master_key = master_key
        self.count_cap = count_cap
        self.unstable_ties = False
        self.failures: list[int] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.requests_served = 0
        self.source: RowSource = source or MemorySource(self)
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="litellm-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, *rows: dict[str, Any]) -> None:
        with self.lock:
            self.rows.extend(rows)

    def fail_next(self, count: int = 1, *, status: int = 500) -> None:
        with self.lock:
            self.failures.extend([status] * count)

    def start(self) -> "SpendLogStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "SpendLogStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
