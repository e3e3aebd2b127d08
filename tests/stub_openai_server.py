"""A loopback OpenAI-compatible chat provider that counts its requests (run as a script).

Runs under .venv-litellm's Python (started by tests/litellm_proxy.running_stub_provider) because it
counts prompt tokens with tiktoken, independently of LiteLLM: OpenAI's documented rule for chat
models (3 tokens per message + the tokens of each field, +1 for a name, +3 priming the reply) over
o200k_base, gpt-4o-mini's encoding. Prints its port on the first stdout line.

- POST /v1/chat/completions: 200 with `usage`; completion tokens = min(max_tokens or
  max_completion_tokens, COMPLETION_TOKENS), so never above the request's cap.
- POST /fail/v1/chat/completions: 500 (a provider failure), counted.
- GET /_stats: {"ok": n, "fail": n}; POST /_reset zeroes the counts.
"""

import importlib.util
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Offline: read the encoding from the copy LiteLLM ships (as LiteLLM itself does), never download it.
_litellm = importlib.util.find_spec("litellm")
if _litellm is not None and _litellm.origin is not None:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(_litellm.origin).parent / "litellm_core_utils" / "tokenizers"))

import tiktoken  # noqa: E402 - after TIKTOKEN_CACHE_DIR is set

COMPLETION_TOKENS = 200
# /slow/: a stream that lasts SLOW_CHUNKS × SLOW_CHUNK_SECONDS.
SLOW_CHUNKS = 8
SLOW_CHUNK_SECONDS = 0.5
ENCODING = tiktoken.get_encoding("o200k_base")
_lock = threading.Lock()
_counts = {"ok": 0, "fail": 0}


def _text_tokens(value: object) -> int:
    if isinstance(value, str):
        return len(ENCODING.encode(value))
    if isinstance(value, list):  # content parts
        return sum(_text_tokens(part.get("text", "")) for part in value if isinstance(part, dict))
    return 0


def prompt_tokens(messages: list[dict]) -> int:
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3
        for key, value in message.items():
            total += _text_tokens(value)
            if key == "name":
                total += 1
    return total


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream_slowly(self, body: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        created, chunk_id = int(time.time()), f"chatcmpl-slow-{time.time_ns()}"

        def event(delta: dict, finish: str | None, usage: dict | None = None) -> None:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model", "gpt-4o-mini"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                chunk["usage"] = usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        for _ in range(SLOW_CHUNKS):
            event({"role": "assistant", "content": "ok "}, None)
            time.sleep(SLOW_CHUNK_SECONDS)
        prompt = prompt_tokens(body.get("messages") or [])
        event(
            {},
            "stop",
            {"prompt_tokens": prompt, "completion_tokens": SLOW_CHUNKS, "total_tokens": prompt + SLOW_CHUNKS},
        )
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/_stats":
            with _lock:
                self._send(200, dict(_counts))
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == "/_reset":
            with _lock:
                _counts.update(ok=0, fail=0)
            self._send(200, {})
        elif self.path == "/fail/v1/chat/completions":
            with _lock:
                _counts["fail"] += 1
            self._send(500, {"error": {"message": "stub provider failure", "type": "server_error", "code": None}})
        elif self.path == "/slow/v1/chat/completions":
            # A long stream: SLOW_CHUNKS chunks, SLOW_CHUNK_SECONDS apart (a provider that takes its time).
            with _lock:
                _counts["ok"] += 1
            self._stream_slowly(body)
        elif self.path == "/v1/chat/completions":
            with _lock:
                _counts["ok"] += 1
            cap = body.get("max_completion_tokens") or body.get("max_tokens") or COMPLETION_TOKENS
            completion = min(int(cap), COMPLETION_TOKENS)
            prompt = prompt_tokens(body.get("messages") or [])
            self._send(
                200,
                {
                    "id": f"chatcmpl-stub-{time.time_ns()}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "gpt-4o-mini"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok " * completion},
                            "finish_reason": "length" if completion == cap else "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                },
            )
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
