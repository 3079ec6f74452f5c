"""A scripted, fake OpenAI-compatible chat-completions server for tests.

Stdlib only (``http.server`` + ``threading`` + ``json``), real HTTP on loopback,
so the real ``openai`` SDK can be pointed at it with ``base_url``.

In-process use::

    from fake_openai import FakeOpenAIServer, Reply, text_contains

    with FakeOpenAIServer() as srv:
        srv.on(text_contains("PLAN"), Reply(content=plan_json))   # routing rule
        srv.script(Reply.error(429, "slow down", retry_after=1))   # next request only
        client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        ...
        assert len(srv.chat_requests()) == 2

Responder selection for each ``POST /v1/chat/completions`` (first match wins):

1. the FIFO queue filled by ``srv.script(*responders)`` (each entry used once);
2. the rules added by ``srv.on(predicate, responder, times=None)``, in order;
3. the default responder (``srv.set_default(...)``); the built-in default
   echoes ``"echo: <text of the last user message>"``.

A *responder* is a :class:`Reply`, a ``str`` (shorthand for ``Reply(content=...)``),
or a callable ``(body: dict) -> Reply | str``. If a callable raises, the
server answers 500 and appends the exception to ``srv.errors``.

Requests with ``"stream": true`` get a 400 OpenAI-style error (no SSE support).
``GET /v1/models`` and ``GET /v1/models/{id}`` are served from ``models=``.

Standalone use (e.g. for a subprocess that a test SIGKILLs)::

    python tests/fake_openai.py --port-file PATH [--script JSON_FILE] [--log PATH]
    python -m tests.fake_openai  --port-file PATH ...      # from the repo root

The port is written to ``--port-file`` (atomically, via rename) once the
socket is listening. With ``--log``, one JSON line per received request
(``{"n", "method", "path", "headers", "body", "time", "monotonic"}``) is
appended and flushed + fsynced *before* the reply is produced, so the count
survives a SIGKILL. SIGTERM/SIGINT stop the server cleanly.

Script file format (``--script``), all keys optional::

    {
      "default": {"mode": "echo"},              # or {"mode": "fixed", "content": "..."}
                                                # may also carry "delay" (seconds)
      "rules": [                                # checked in order, first match wins
        {
          "match_substring": "PLAN",            # required; searched in message text
          "roles": ["system", "user"],          # optional; default: all roles
          "content": "...",                     # assistant text, or
          "content_json": {"nodes": []},        # any JSON value, serialised to text
          "status": 200,                        # >= 400 -> OpenAI error body using
          "message": "scripted error",          #   "message" (+ "retry_after" secs)
          "retry_after": null,
          "delay": 0,                           # seconds before replying
          "drop": false,                        # close the socket, no response
          "times": null                         # use at most N times (null = forever)
        }
      ]
    }

Typical: the planner prompt contains "PLAN" and gets a fixed plan JSON via
``content_json``; everything else gets the echo text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeAlias

__all__ = [
    "FakeOpenAIServer",
    "Reply",
    "Responder",
    "Predicate",
    "message_text",
    "last_user_text",
    "text_contains",
    "echo_responder",
    "load_script",
]

JSONDict: TypeAlias = dict[str, Any]

# Default error "type"/"code" per status, loosely following what api.openai.com sends.
_ERROR_DEFAULTS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def _format_seconds(value: float) -> str:
    """Render seconds for a header: ``2`` rather than ``2.0``, ``0.5`` kept."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Reply:
    """What the fake server should answer to one chat-completions request.

    Attributes:
        content: assistant message text (ignored when ``json_body`` is set).
        status: HTTP status code.
        headers: extra response headers.
        json_body: raw JSON body override; sent verbatim instead of a completion.
        delay: seconds to wait before answering (to provoke client timeouts).
        drop: close the connection without sending any response bytes.
        usage: ``{"prompt_tokens", "completion_tokens", "total_tokens"}``;
            by default estimated as ``ceil(chars / 4)``.
        finish_reason: ``choices[0].finish_reason`` (e.g. ``"length"``).
    """

    content: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    json_body: JSONDict | None = None
    delay: float = 0.0
    drop: bool = False
    usage: dict[str, int] | None = None
    finish_reason: str = "stop"

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        type: str | None = None,
        retry_after: float | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``.

        ``type``/``code`` default to values typical for ``status``; ``retry_after``
        (seconds) adds a ``Retry-After`` header.
        """
        default_type, default_code = _ERROR_DEFAULTS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["Retry-After"] = _format_seconds(retry_after)
        body = {
            "error": {
                "message": message,
                "type": type if type is not None else default_type,
                "param": param,
                "code": code if code is not None else default_code,
            }
        }
        return cls(status=status, headers=hdrs, json_body=body, delay=delay)

    @classmethod
    def dropped(cls, delay: float = 0.0) -> Reply:
        """Close the connection without answering (after ``delay`` seconds)."""
        return cls(drop=True, delay=delay)


Responder: TypeAlias = Reply | str | Callable[[JSONDict], Reply | str]
Predicate: TypeAlias = Callable[[JSONDict], bool]


# --------------------------------------------------------------------------- helpers


def _content_to_text(content: Any) -> str:
    """Flatten a message ``content`` (str, or list of content parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def message_text(body: Mapping[str, Any], roles: Iterable[str] | None = None) -> str:
    """Concatenated text of all messages in ``body`` (optionally only ``roles``)."""
    wanted = set(roles) if roles is not None else None
    texts: list[str] = []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        if wanted is not None and msg.get("role") not in wanted:
            continue
        texts.append(_content_to_text(msg.get("content")))
    return "\n".join(texts)


def last_user_text(body: Mapping[str, Any]) -> str:
    """Text of the last ``role == "user"`` message, or ``""``."""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return _content_to_text(msg.get("content"))
    return ""


def text_contains(substring: str, roles: Iterable[str] | None = None) -> Predicate:
    """Predicate: some message (of ``roles``, default any) contains ``substring``."""
    role_list = list(roles) if roles is not None else None

    def predicate(body: JSONDict) -> bool:
        return substring in message_text(body, role_list)

    predicate.__name__ = f"text_contains({substring!r})"
    return predicate


def echo_responder(body: JSONDict) -> Reply:
    """The built-in default: ``"echo: " + last user message``."""
    return Reply(content="echo: " + last_user_text(body))


def _estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))


def _resolve(responder: Responder, body: JSONDict) -> Reply:
    if isinstance(responder, Reply):
        return responder
    if isinstance(responder, str):
        return Reply(content=responder)
    result = responder(body)
    if isinstance(result, str):
        return Reply(content=result)
    if not isinstance(result, Reply):
        raise TypeError(f"responder returned {type(result).__name__}, expected Reply or str")
    return result


@dataclass
class _Rule:
    predicate: Predicate
    responder: Responder
    remaining: int | None  # None = unlimited


# --------------------------------------------------------------------------- server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for keep-alive handler threads on close
    request_queue_size = 1024  # listen() backlog; socketserver's default of 5 resets bursts
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away (timeouts, drops, close())."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "FakeOpenAI/1.0"

    # -- plumbing ---------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def _send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the socket abruptly: no status line, nothing."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()

    def _read_body(self) -> tuple[Any, str | None]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None, None
        try:
            return json.loads(raw), None
        except ValueError:
            return None, raw.decode("utf-8", "replace")

    # -- verbs ------------------------------------------------------------
    def do_GET(self) -> None:
        fake = self.server.fake
        fake._record(self, None, None)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._send_json(
                200, {"object": "list", "data": [fake._model_obj(m) for m in fake.models]}
            )
        elif path.startswith("/v1/models/") and path[len("/v1/models/") :] in fake.models:
            self._send_json(200, fake._model_obj(path[len("/v1/models/") :]))
        else:
            reply = Reply.error(404, f"Unknown path {self.path}")
            self._send_json(reply.status, reply.json_body)

    def do_POST(self) -> None:
        fake = self.server.fake
        body, raw = self._read_body()
        fake._record(self, body, raw)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            reply = Reply.error(404, f"Unknown path {self.path}")
        elif not isinstance(body, dict):
            reply = Reply.error(400, "We could not parse the JSON body of your request.")
        elif body.get("stream"):
            reply = Reply.error(
                400, "The fake server does not support stream=true.", param="stream"
            )
        else:
            reply = fake._reply_for(body)
        if reply.delay > 0 and fake._closing.wait(reply.delay):
            self._drop()  # server shutting down while we slept
            return
        if reply.drop:
            self._drop()
            return
        payload = (
            reply.json_body if reply.json_body is not None else fake._completion(body or {}, reply)
        )
        headers = {"x-request-id": f"req_fake_{fake._next_id()}", **reply.headers}
        self._send_json(reply.status, payload, headers)


class FakeOpenAIServer:
    """Scripted OpenAI-compatible server on ``127.0.0.1``; starts on construction.

    Use as a context manager or call :meth:`close`. See the module docstring for
    how replies are chosen.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Iterable[str] = ("gpt-4o-mini", "gpt-4o"),
        default: Responder | None = None,
        log_path: str | os.PathLike[str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.models: list[str] = list(models)
        self.verbose = verbose
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[JSONDict] = []
        self._queue: deque[Responder] = deque()
        self._rules: list[_Rule] = []
        self._default: Responder = default if default is not None else echo_responder
        self._ids = 0
        self._connections: set[socket.socket] = set()
        self._closing = threading.Event()
        self._log_file = open(log_path, "a", encoding="utf-8") if log_path is not None else None  # noqa: SIM115

        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self.host: str = host
        self.port: int = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- lifecycle --------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` - pass as ``base_url`` to the SDK."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, abort in-flight/keep-alive connections. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._httpd.shutdown()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join(timeout=5)
        if self._log_file is not None:
            self._log_file.close()

    # -- scripting --------------------------------------------------------
    def script(self, *responders: Responder) -> FakeOpenAIServer:
        """Queue responders, each used for exactly one chat request (FIFO)."""
        with self._lock:
            self._queue.extend(responders)
        return self

    def on(
        self, predicate: Predicate, responder: Responder, *, times: int | None = None
    ) -> FakeOpenAIServer:
        """Add a routing rule (checked after the queue, before the default).

        ``times`` limits how often the rule may fire (``None`` = unlimited).
        """
        with self._lock:
            self._rules.append(_Rule(predicate, responder, times))
        return self

    def set_default(self, responder: Responder) -> FakeOpenAIServer:
        """Replace the fallback responder (initially :func:`echo_responder`)."""
        with self._lock:
            self._default = responder
        return self

    def reset(self) -> None:
        """Forget recorded requests, queue, rules, errors; restore the echo default."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self._rules.clear()
            self.errors.clear()
            self._default = echo_responder

    @property
    def pending(self) -> int:
        """Number of queued (not yet consumed) scripted responders."""
        with self._lock:
            return len(self._queue)

    # -- inspection -------------------------------------------------------
    @property
    def requests(self) -> list[JSONDict]:
        """Snapshot of recorded requests: ``{"path", "method", "headers", "body", "time", ...}``."""
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[JSONDict]:
        """Bodies of the ``POST /v1/chat/completions`` requests received so far."""
        return [
            r["body"]
            for r in self.requests
            if r["path"].split("?", 1)[0].endswith("/chat/completions")
        ]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[JSONDict]:
        """Block until ``count`` requests were received, else raise ``TimeoutError``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"got {len(self._requests)} requests, wanted {count}")
            return list(self._requests)

    # -- internals (called from handler threads) --------------------------
    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _record(self, handler: BaseHTTPRequestHandler, body: Any, raw: str | None) -> None:
        entry: JSONDict = {
            "method": handler.command,
            "path": handler.path,
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "body": body,
            "time": time.time(),
            "monotonic": time.monotonic(),
        }
        if raw is not None:
            entry["raw_body"] = raw
        with self._cond:
            entry["n"] = len(self._requests) + 1
            self._requests.append(entry)
            if self._log_file is not None:
                self._log_file.write(json.dumps(entry) + "\n")
                self._log_file.flush()
                os.fsync(self._log_file.fileno())
            self._cond.notify_all()

    def _pick(self, body: JSONDict) -> Responder:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            rules = list(self._rules)
            default = self._default
        for rule in rules:  # predicates run unlocked: they are user code
            if rule.predicate(body):
                with self._lock:
                    if rule.remaining is not None:
                        if rule.remaining <= 0:
                            continue
                        rule.remaining -= 1
                return rule.responder
        return default

    def _reply_for(self, body: JSONDict) -> Reply:
        try:
            return _resolve(self._pick(body), body)
        except Exception as exc:  # surfaced to the test through srv.errors
            with self._lock:
                self.errors.append(exc)
            return Reply.error(500, f"fake responder raised {type(exc).__name__}: {exc}")

    def _completion(self, body: Mapping[str, Any], reply: Reply) -> JSONDict:
        usage = reply.usage
        if usage is None:
            prompt = _estimate_tokens(message_text(body))
            completion = _estimate_tokens(reply.content)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        return {
            "id": f"chatcmpl-fake{self._next_id()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "fake-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": usage,
            "system_fingerprint": "fp_fake",
        }

    def _model_obj(self, model: str) -> JSONDict:
        return {"id": model, "object": "model", "created": 0, "owned_by": "fake-openai"}


# --------------------------------------------------------------------------- script files


def _rule_reply(rule: Mapping[str, Any]) -> Reply:
    status = int(rule.get("status", 200))
    delay = float(rule.get("delay", 0))
    if rule.get("drop"):
        return Reply(drop=True, delay=delay)
    if status >= 400:
        return Reply.error(
            status,
            str(rule.get("message", "scripted error")),
            retry_after=rule.get("retry_after"),
            delay=delay,
        )
    content = (
        json.dumps(rule["content_json"]) if "content_json" in rule else str(rule.get("content", ""))
    )
    return Reply(content=content, status=status, delay=delay)


def load_script(server: FakeOpenAIServer, script: Mapping[str, Any]) -> None:
    """Configure ``server`` from a parsed script document (format: module docstring)."""
    default = script.get("default") or {"mode": "echo"}
    mode = default.get("mode", "echo" if "content" not in default else "fixed")
    delay = float(default.get("delay", 0))
    if mode == "echo":
        if delay:
            server.set_default(
                lambda body: Reply(content="echo: " + last_user_text(body), delay=delay)
            )
        else:
            server.set_default(echo_responder)
    elif mode == "fixed":
        server.set_default(Reply(content=str(default.get("content", "")), delay=delay))
    else:
        raise ValueError(f"unknown default mode {mode!r} (expected 'echo' or 'fixed')")
    for rule in script.get("rules") or []:
        times = rule.get("times")
        server.on(
            text_contains(str(rule["match_substring"]), rule.get("roles")),
            _rule_reply(rule),
            times=None if times is None else int(times),
        )


def _write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f"{port}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point for the standalone process (see module docstring)."""
    parser = argparse.ArgumentParser(description="Fake OpenAI chat-completions server.")
    parser.add_argument("--port-file", required=True, help="write the listening port here")
    parser.add_argument("--script", help="JSON script file (format: module docstring)")
    parser.add_argument("--log", help="append one JSON line per received request")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="log HTTP lines to stderr")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    server = FakeOpenAIServer(
        host=args.host, port=args.port, log_path=args.log, verbose=args.verbose
    )
    try:
        if args.script:
            with open(args.script, encoding="utf-8") as fh:
                load_script(server, json.load(fh))
        _write_port_file(args.port_file, server.port)
        while not stop.wait(0.2):
            pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
