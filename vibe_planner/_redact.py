"""`Redactor`: takes secrets (the API key) out of text a server sent us, before we keep or log it.

Some servers and gateways echo the key they were given: ``Incorrect API key provided: sk-...``.
Server text reaches exception messages, log lines, node errors and hence checkpoints, so it
goes through a `Redactor` where it comes in (the LLM session redacts every error message and
reply it hands on). What counts as an occurrence of a secret *s*:

- *s* itself, in any ASCII letter case (``Bearer s``, ``S.UPPER()``, repeated, anywhere);
- its encodings: percent-encoded (the unsafe bytes or every byte), JSON- and repr-escaped, and
  base64 (standard and URL-safe, at each of the three byte alignments, so the key inside
  ``base64("user:" + s)`` is found too);
- for secrets of `MIN_FRAGMENT_SECRET` characters or more, every run of `FRAGMENT` characters
  of *s* or more (scaled to the length of each encoding): truncated or half-masked echoes such
  as ``sk-proj-AbCdEfGh...wxyz`` lose their long part.

Short secrets are a different matter: local servers take ``"ollama"``, ``"EMPTY"`` or ``"x"``,
and replacing every ``x`` would mangle the text while hiding nothing. So secrets shorter than
`MIN_SECRET` characters are not redacted at all, and those shorter than `MIN_FRAGMENT_SECRET`
only whole (the fragments of ``"password1234"`` are ordinary words). Overlapping and adjacent
matches become a single `MARKER`.
"""

from __future__ import annotations

import base64
import json
import math
import string
import urllib.parse
from collections.abc import Iterable, Iterator

from pydantic import SecretStr

__all__ = ["FRAGMENT", "MARKER", "MIN_FRAGMENT_SECRET", "MIN_SECRET", "Redactor", "redact"]

MARKER = "[REDACTED]"
"""What a redacted secret is replaced with."""
MIN_SECRET = 8
"""Secrets shorter than this are left alone: too likely to be ordinary text."""
MIN_FRAGMENT_SECRET = 16
"""Secrets at least this long also lose every run of `FRAGMENT` or more of their characters."""
FRAGMENT = 8
"""Shortest run of a long secret's characters that is redacted."""

_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class Redactor:
    """Replaces every occurrence of some secrets in a text with `MARKER`; call it on the text.

    Args:
        secrets: The secrets, as strings or `SecretStr`; ``None`` and short ones are ignored.

    Example:
        >>> redact = Redactor(["sk-proj-0123456789abcdefghij"])
        >>> redact("Incorrect API key provided: sk-proj-0123456789abcdefghij")
        'Incorrect API key provided: [REDACTED]'
        >>> redact("key sk-proj-0123...ghij is invalid")
        'key [REDACTED]...ghij is invalid'

    """

    __slots__ = ("_grams", "_shortest")

    def __init__(self, secrets: Iterable[str | SecretStr | None] = ()) -> None:
        # Window length -> the lower-cased windows of that length that give a secret away.
        grams: dict[int, set[str]] = {}
        for secret in secrets:
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if value and len(value) >= MIN_SECRET:
                for form, run in _forms(value):
                    form = form.translate(_LOWER)
                    grams.setdefault(run, set()).update(
                        form[i : i + run] for i in range(len(form) - run + 1))
        self._grams = {run: tuple(sorted(found)) for run, found in sorted(grams.items())}
        self._shortest = min(grams, default=0)

    def __bool__(self) -> bool:
        """Whether there is anything to redact."""
        return bool(self._grams)

    def __repr__(self) -> str:
        return f"<Redactor: {'active' if self._grams else 'nothing to redact'}>"

    def __call__(self, text: str) -> str:
        """Return *text* with every occurrence of the secrets replaced by `MARKER`."""
        if not self._grams or len(text) < self._shortest:
            return text
        spans = sorted(self._spans(text.translate(_LOWER)))
        if not spans:
            return text
        parts, done = [], 0
        for start, end in _merged(spans):
            parts += [text[done:start], MARKER]
            done = end
        parts.append(text[done:])
        return "".join(parts)

    def _spans(self, lowered: str) -> Iterator[tuple[int, int]]:
        # A run of a secret longer than the window is a chain of overlapping windows, so the
        # union of the windows found is exactly what must go.
        for run, windows in self._grams.items():
            for window in windows:
                at = lowered.find(window)
                while at >= 0:
                    yield at, at + run
                    at = lowered.find(window, at + 1)


def redact(text: str, secrets: Iterable[str | SecretStr | None]) -> str:
    """Return *text* without the *secrets*; see `Redactor` (build one to redact many texts)."""
    return Redactor(secrets)(text)


def _merged(spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Merge sorted, possibly overlapping or touching spans."""
    start, end = spans[0]
    for next_start, next_end in spans[1:]:
        if next_start > end:
            yield start, end
            start = next_start
        end = max(end, next_end)
    yield start, end


def _forms(secret: str) -> Iterator[tuple[str, int]]:
    """Yield each form a server may echo *secret* in, with the shortest run of it to redact."""
    whole = len(secret) < MIN_FRAGMENT_SECRET
    raw = secret.encode()
    textual = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        repr(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        "".join(f"%{byte:02x}" for byte in raw),
    }
    encoded = {core for shift in range(3) for core in _base64_cores(raw, shift)}
    for form in sorted(textual | encoded):
        if whole:
            yield form, len(form)
        else:
            # A form n times longer than the secret gives FRAGMENT characters away in n * FRAGMENT.
            yield form, max(FRAGMENT, math.ceil(FRAGMENT * len(form) / len(secret)))


def _base64_cores(raw: bytes, shift: int) -> Iterator[str]:
    """Yield the base64 characters that depend on *raw* alone when it starts *shift* bytes in."""
    start, end = math.ceil(8 * shift / 6), (8 * (shift + len(raw))) // 6
    padded = b"\0" * shift + raw
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        yield encode(padded).decode()[start:end]
