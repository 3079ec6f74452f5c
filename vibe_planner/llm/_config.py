"""`LLMConfig`: which OpenAI-compatible endpoint to use and how hard to push it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretStr

from .._retry import RetryPolicy

__all__ = ["LLMConfig"]

StructuredOutput = Literal["auto", "json_schema", "json_object", "none"]


class LLMConfig(BaseModel):
    """Settings for the LLM planner and the ``llm`` node handler.

    Works with any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, a
    LiteLLM proxy) through the official ``openai`` SDK. The API key is a `SecretStr`: it never
    appears in reprs, logs, errors or checkpoints, and a server that echoes it back has it
    redacted from everything it says (see `vibe_planner._redact` for what is caught).

    Example:
        >>> config = LLMConfig(model="llama3.1", base_url="http://localhost:11434/v1", api_key="ollama")
        >>> config.api_key
        SecretStr('**********')

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "gpt-4o-mini"
    """Model name as the endpoint knows it."""
    base_url: str | None = None
    """Endpoint URL ending in ``/v1``; ``None`` means OpenAI's."""
    api_key: SecretStr | None = None
    """API key; local servers usually accept any non-empty string."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds one HTTP request may take (connect, write, read)."""
    max_retries: int = Field(default=4, ge=0, le=20)
    """Retries of a request after a transient failure (429, 5xx, timeout, dropped connection)."""
    retry_initial_delay: float = Field(default=0.5, ge=0, allow_inf_nan=False)
    """First backoff delay in seconds (doubles per retry, with jitter; at least Retry-After)."""
    retry_max_delay: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    """Longest backoff delay in seconds (a server's ``Retry-After`` is honoured up to ten times it)."""
    requests_per_minute: float | None = Field(default=None, gt=0)
    """Global request rate limit shared by the planner and every node of a run."""
    max_concurrency: int = Field(default=8, ge=1)
    """Most requests in flight at once."""
    max_repair_attempts: int = Field(default=2, ge=0, le=10)
    """Times an invalid plan is sent back to the model with the validation errors."""
    max_plan_nodes: int = Field(default=200, ge=1, le=20_000)
    """Largest plan the planner accepts from the model."""
    structured_output: StructuredOutput = "auto"
    """How to ask for JSON: ``auto`` tries a JSON schema, then JSON mode, then plain words."""
    max_tokens: int | None = Field(default=4096, ge=1, le=1_000_000)
    """Most tokens one reply may have, sent with every request (``None`` sends none: the
    server's cap then applies, and a looping model runs until it)."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature; ``None`` leaves the server's default."""
    top_p: float | None = Field(default=None, gt=0, le=1)
    """Nucleus sampling; ``None`` leaves the server's default."""
    seed: int | None = None
    """Sampling seed, for servers that honour it (llama.cpp, vLLM, OpenAI best effort)."""
    extra_body: dict[str, JsonValue] = Field(default_factory=dict)
    """Other request fields a server understands, e.g. ``{"top_k": 40, "repeat_penalty": 1.1}``
    for llama.cpp; sent with every request."""

    def retry_policy(self) -> RetryPolicy:
        """Return the backoff of this endpoint's request retries as a `RetryPolicy`."""
        return RetryPolicy(max_attempts=self.max_retries + 1, initial_delay=self.retry_initial_delay,
                           max_delay=self.retry_max_delay)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> LLMConfig | None:
        """Read ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` and ``VIBE_PLANNER_MODEL``.

        Returns ``None`` when neither a key nor a base URL is set (the offline default applies).
        """
        env = os.environ if env is None else env
        api_key = env.get("OPENAI_API_KEY") or None
        base_url = env.get("OPENAI_BASE_URL") or None
        if api_key is None and base_url is None and not overrides:
            return None
        values: dict[str, object] = {"api_key": api_key, "base_url": base_url}
        if env.get("VIBE_PLANNER_MODEL"):
            values["model"] = env["VIBE_PLANNER_MODEL"]
        values.update(overrides)
        return cls.model_validate(values)
