"""`LLMSession`: one `AsyncOpenAI` client per run, with rate limiting and retry classification.

The SDK's own retries are turned off (``max_retries=0``) so that every HTTP request is ours to
count, pace and classify:

- transient (429, 408, 409, 5xx, timeouts, dropped connections): retried with exponential
  backoff and jitter, never sooner than the server's ``Retry-After``; a 429 also pauses every
  other request of the session until that time (no 429 storm);
- permanent (400, 401, 403, 404, 422): raised at once as `LLMRequestError` with
  ``retryable=False`` so the node fails without burning attempts.

Everything the server says passes through the session's `Redactor` before it is handed on
(error messages, reply texts): gateways that echo the API key ("Incorrect API key provided:
sk-...") must not put it into our exceptions, logs, node errors and checkpoints.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import anyio

from .. import _telemetry as telemetry
from .._exceptions import NodeError
from .._models import TokenUsage
from .._redact import Redactor
from ._config import LLMConfig

if TYPE_CHECKING:
    import openai

__all__ = ["ChatReply", "LLMRequestError", "LLMSession", "RateLimiter"]

logger = logging.getLogger("vibe_planner.llm")
_TRANSIENT_STATUS = {408, 409, 425, 429}


class LLMRequestError(NodeError):
    """A chat request failed (after retries, if the failure was transient).

    Attributes:
        status_code: HTTP status, if the server answered.
        retryable: Whether the failure was transient.
        retry_after: Seconds the server asked to wait, if it said.

    """

    def __init__(
        self, message: str, *, status_code: int | None, retryable: bool, retry_after: float | None
    ) -> None:
        self.status_code = status_code
        super().__init__(message, retryable=retryable, retry_after=retry_after)


class ChatReply:
    """The text of a chat completion, the tokens it cost and why it ended."""

    __slots__ = ("finish_reason", "text", "usage")

    def __init__(self, text: str, usage: TokenUsage, finish_reason: str | None = None) -> None:
        self.text = text
        self.usage = usage
        self.finish_reason = finish_reason
        """``stop``, or ``length`` when ``max_tokens`` cut the reply."""


class RateLimiter:
    """Spaces request starts at least ``60 / requests_per_minute`` seconds apart.

    Also holds the pause a 429 imposes on every request. Share one between the sessions of a
    `MetaPlanner` (planning and runs) so the limit is global.
    """

    def __init__(self, requests_per_minute: float | None) -> None:
        self._interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self.paused_until = 0.0

    async def wait_turn(self) -> None:
        now = time.monotonic()
        start = max(now, self._next, self.paused_until)
        self._next = start + self._interval
        if start > now:
            await anyio.sleep(start - now)


class LLMSession:
    """A client for one run; use as ``async with LLMSession(config) as session``."""

    def __init__(self, config: LLMConfig, rate_limiter: RateLimiter | None = None) -> None:
        self.config = config
        self._client: openai.AsyncOpenAI | None = None
        self._limiter = anyio.CapacityLimiter(config.max_concurrency)
        self._rate = rate_limiter or RateLimiter(config.requests_per_minute)
        self.retry = config.retry_policy()
        """The backoff of this session's retries (and the cap of every ``Retry-After``)."""
        self.redact = Redactor([config.api_key])
        """Takes the API key out of server text; apply it to any server text kept or logged."""
        self.requests = 0
        """HTTP requests sent (retries included)."""

    async def __aenter__(self) -> LLMSession:
        # Imported here: the SDK takes about a second to import, which every CLI command and
        # offline run would otherwise pay for nothing.
        import openai

        key = self.config.api_key.get_secret_value() if self.config.api_key else None
        self._client = openai.AsyncOpenAI(
            api_key=key or "not-needed", base_url=self.config.base_url,
            timeout=self.config.timeout, max_retries=0,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            with anyio.CancelScope(shield=True):
                await self._client.close()
            self._client = None

    async def chat(
        self, messages: list[dict[str, Any]], *, response_format: dict[str, Any] | None = None
    ) -> ChatReply:
        """Send a chat completion, retrying transient failures; return its text and usage."""
        attempt = 0
        while True:
            try:
                return await self._send(messages, response_format)
            except LLMRequestError as exc:
                if not exc.retryable or attempt >= self.config.max_retries:
                    raise
                delay = self.retry.delay(attempt + 1, retry_after=exc.retry_after)
                logger.info("LLM request failed (%s); retry %d in %.2fs", exc, attempt + 1, delay)
                attempt += 1
                await anyio.sleep(delay)

    async def _send(
        self, messages: list[dict[str, Any]], response_format: dict[str, Any] | None
    ) -> ChatReply:
        if self._client is None:
            raise RuntimeError("LLMSession used outside 'async with'")
        extra: dict[str, Any] = {}
        if response_format is not None:
            extra["response_format"] = response_format
        config = self.config
        if config.max_tokens is not None:
            extra["max_tokens"] = config.max_tokens
        if config.temperature is not None:
            extra["temperature"] = config.temperature
        if config.top_p is not None:
            extra["top_p"] = config.top_p
        if config.seed is not None:
            extra["seed"] = config.seed
        if config.extra_body:
            extra["extra_body"] = config.extra_body
        import openai

        async with self._limiter:
            await self._rate.wait_turn()
            self.requests += 1
            with telemetry.chat_span(config) as span:
                try:
                    completion = await self._client.chat.completions.create(
                        model=config.model, messages=cast(Any, messages), **extra)
                except openai.APIError as exc:
                    error = self._classify(exc)
                    telemetry.chat_failed(span, error, error.status_code)
                else:
                    reply = _reply_of(completion, self.redact)
                    telemetry.chat_finished(span, config, reply, getattr(completion, "model", None))
                    return reply
        # Raised outside the except block: the SDK's error, whose message and body may echo
        # the key, must not ride along as __context__ into tracebacks.
        raise error

    def _classify(self, exc: openai.APIError) -> LLMRequestError:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return LLMRequestError(f"LLM request timed out after {self.config.timeout}s",
                                   status_code=None, retryable=True, retry_after=None)
        if isinstance(exc, openai.APIConnectionError):
            return LLMRequestError(self.redact(f"LLM connection failed: {exc.message}"),
                                   status_code=None, retryable=True, retry_after=None)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retry_after = self.retry.cap_retry_after(_retry_after(exc.response.headers))
            if status == 429 and retry_after is not None:
                # Everyone waits: the limit is the endpoint's, not this request's.
                self._rate.paused_until = max(self._rate.paused_until, time.monotonic() + retry_after)
            transient = status in _TRANSIENT_STATUS or status >= 500
            return LLMRequestError(f"LLM endpoint answered {status}: {_server_message(exc, self.redact)}",
                                   status_code=status, retryable=transient, retry_after=retry_after)
        return LLMRequestError(self.redact(f"LLM reply unusable: {exc.message}"), status_code=None,
                               retryable=True, retry_after=None)


def _reply_of(completion: Any, redact: Redactor) -> ChatReply:
    choices = getattr(completion, "choices", None) or []
    if not choices or choices[0].message is None:
        raise LLMRequestError("LLM reply has no choices", status_code=None, retryable=True,
                              retry_after=None)
    text = redact(choices[0].message.content or "")
    usage = getattr(completion, "usage", None)
    tokens = TokenUsage(
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        total_tokens=getattr(usage, "total_tokens", 0) or 0,
        requests=1,
    )
    return ChatReply(text, tokens, getattr(choices[0], "finish_reason", None))


def _retry_after(headers: Any) -> float | None:
    """Return the seconds a response asks to wait (``Retry-After-Ms``, then ``Retry-After``).

    ``None`` when absent or malformed; not capped here (`RetryPolicy.cap_retry_after` does).
    """
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # neither seconds nor an HTTP date
    return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _server_message(exc: openai.APIStatusError, redact: Redactor) -> str:
    """Return what the server said went wrong, without secrets, in at most 500 characters."""
    body = exc.body  # the SDK has unwrapped {"error": ...} already
    message: object = None
    if isinstance(body, dict):
        error = body.get("error")  # proxies that nest it once more, as a dict or a string
        message = body.get("message") or (error.get("message") if isinstance(error, dict) else error)
    # Redacted before it is cut: a cut through an echoed key would leave an unrecognised part.
    return redact(str(message or exc.message)[:4000])[:500]
