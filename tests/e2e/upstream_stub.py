"""A tiny upstream behind Envoy for the end-to-end tests.

Answers like the Casola API would:
  POST /openai/v1/chat/completions  a valid OpenAI `chat.completion` object
  GET  /openai/v1/models            an OpenAI model list
  GET  /api/users/me                the caller, as told by the x-casola-* identity headers
  any other path                    {"ok": true, "method": ..., "path": ...}
and records every request it gets (method, path, headers, body) so tests can check what
crossed the gateway:
  GET    /__seen   {"requests": [{"method", "path", "headers": [[name, value], ...], "body"}]}
  DELETE /__seen   forget them
The /__seen endpoints are for the tests, which call the stub directly, not through Envoy.

Run: python upstream_stub.py PORT   (prints "listening on 127.0.0.1:PORT" when ready)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "casola-test-model"


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict] = []

    def add(self, entry: dict) -> None:
        with self._lock:
            self._requests.append(entry)

    def all(self) -> list[dict]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


def wsgi_environ(headers: list[list[str]]) -> dict[str, str]:
    """The HTTP_* keys a WSGI/CGI server (PEP 3333) would build from these request headers:
    upper case, `-` and `_` alike turned into `_`, repeated headers joined with commas. This
    is how `x_casola_org_id` and `x-casola-org-id` become one HTTP_X_CASOLA_ORG_ID."""
    environ: dict[str, str] = {}
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def chat_completion(request: dict) -> dict:
    messages = request.get("messages") or []
    last = messages[-1].get("content", "") if messages else ""
    if isinstance(last, list):  # content parts
        last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
    content = f"echo: {last}"
    return {
        "id": "chatcmpl-casola-e2e-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model") or MODEL,
        "system_fingerprint": "fp_casola_e2e",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": max(1, len(str(last).split())),
            "completion_tokens": max(1, len(content.split())),
            "total_tokens": max(1, len(str(last).split())) + max(1, len(content.split())),
        },
    }


def model_list() -> dict:
    return {
        "object": "list",
        "data": [
            {"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "casola"},
        ],
    }


def make_handler(recorder: Recorder):
    class Handler(BaseHTTPRequestHandler):
        server_version = "casola-upstream-stub/1"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # keep the test output clean
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def _send_json(self, status: int, obj) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self, body: bytes) -> None:
            recorder.add(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "body": body.decode("utf-8", "replace"),
                }
            )

        def _handle(self) -> None:
            body = self._body()
            path = self.path.split("?", 1)[0]
            if path == "/__seen":
                if self.command == "GET":
                    return self._send_json(200, {"requests": recorder.all()})
                if self.command == "DELETE":
                    recorder.clear()
                    return self._send_json(200, {"ok": True})
            self._record(body)
            if self.command == "POST" and path == "/openai/v1/chat/completions":
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    return self._send_json(400, {"error": {"message": "bad json", "type": "invalid_request_error", "param": None, "code": None}})
                if request.get("stream"):
                    return self._send_json(400, {"error": {"message": "streaming is not supported by the stub", "type": "invalid_request_error", "param": "stream", "code": None}})
                return self._send_json(200, chat_completion(request))
            if self.command == "GET" and path == "/openai/v1/models":
                return self._send_json(200, model_list())
            if self.command == "GET" and path == "/api/users/me":
                return self._send_json(
                    200,
                    {
                        "org_id": self.headers.get("x-casola-org-id"),
                        "user_id": self.headers.get("x-casola-user-id"),
                        "token_id": self.headers.get("x-casola-token-id"),
                        "scopes": (self.headers.get("x-casola-scopes") or "").split(),
                    },
                )
            return self._send_json(200, {"ok": True, "method": self.command, "path": path})

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


class UpstreamStub:
    """In-process use: UpstreamStub(port).start() ... .stop()."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.recorder = Recorder()
        self.server = ThreadingHTTPServer((host, port), make_handler(self.recorder))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="upstream-stub", daemon=True)

    def start(self) -> "UpstreamStub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else 8000
    stub = UpstreamStub(port)
    print(f"listening on 127.0.0.1:{stub.port}", flush=True)
    try:
        stub.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stub.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
