"""The plan format the LLM planner asks for: numbered steps that may only follow earlier ones.

A model asked for a graph of nodes with ids gets ids, dependencies and cycles wrong, and small
models repeat the same mistake on every repair. So the model is asked for something it cannot
get wrong under grammar-constrained decoding (``response_format={"type": "json_schema"}``,
which llama.cpp, vLLM, Ollama and OpenAI enforce):

- an ordered list of steps, ``{"step": k, "title", "instructions", "after": [...]}``;
- ``after`` holds numbers of *earlier* steps only: the schema of step ``k`` allows the integers
  ``1..k-1`` (the list is an ``anyOf`` of fixed-length tuples, so each position has a schema of
  its own), so a cycle, a self-dependency or an unknown dependency cannot be written;
- every string has a length limit and the titles a pattern; the number of steps, of
  dependencies and the node kinds are bounded (an ``enum``), so a reply cannot run away;
- node ids are made here from the titles (slugified, deduplicated), never by the model.

Replies that did not go through a grammar (JSON mode, plain text) are checked against the same
rules; ``after`` may then also name an earlier step by its title. Whatever breaks a rule is
quoted back in the repair message, which asks for the smallest change.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import orjson

__all__ = [
    "MAX_AFTER",
    "MAX_INSTRUCTIONS",
    "MAX_TITLE",
    "SCHEMA_MAX_STEPS",
    "StepProblems",
    "quote_value",
    "slugify",
    "steps_schema",
    "steps_to_nodes",
]

MAX_TITLE = 60
"""Longest step title (characters)."""
MAX_INSTRUCTIONS = 600
"""Longest step instructions the schema allows (characters)."""
MAX_AFTER = 8
"""Most dependencies one step may list."""
SCHEMA_MAX_STEPS = 16
"""Most steps the schema describes (its size grows with the square of this)."""
TITLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ,&'-]{0,59}$"
_SLUG_MAX = 40
_NON_SLUG = re.compile(r"[^a-z0-9]+")


class StepProblems(Exception):
    """The reply broke the step rules; ``problems`` quote the offending values."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def steps_schema(kinds: Sequence[str], max_steps: int) -> dict[str, Any]:
    """Return the JSON schema of a reply of 1 to ``min(max_steps, SCHEMA_MAX_STEPS)`` steps."""
    count = max(1, min(max_steps, SCHEMA_MAX_STEPS))
    # Shared parts are $defs, so that a grammar built from the schema has one rule for each
    # (a step's schema appears in every plan length from its position on). No "items": false
    # beside "prefixItems": llama.cpp reads "items" first; "maxItems" bounds the tuple anyway.
    defs: dict[str, Any] = {
        "title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE, "pattern": TITLE_PATTERN},
        "instructions": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUCTIONS},
    }
    if len(kinds) > 1:
        defs["kind"] = {"enum": list(kinds)}
    for k in range(1, count + 1):
        defs[f"step{k}"] = _step_schema(k, len(kinds) > 1)
    plans = [{"type": "array", "prefixItems": [{"$ref": f"#/$defs/step{k}"} for k in range(1, n + 1)],
              "minItems": n, "maxItems": n} for n in range(1, count + 1)]
    return {
        "type": "object",
        "properties": {"steps": {"anyOf": plans}},
        "required": ["steps"],
        "additionalProperties": False,
        "$defs": defs,
    }


def _step_schema(k: int, with_kind: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"step": {"const": k}, "title": {"$ref": "#/$defs/title"}}
    if with_kind:
        properties["kind"] = {"$ref": "#/$defs/kind"}
    properties["instructions"] = {"$ref": "#/$defs/instructions"}
    if k == 1:
        properties["after"] = {"type": "array", "items": {"type": "integer"}, "maxItems": 0}
    else:
        properties["after"] = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": k - 1},
                               "maxItems": min(k - 1, MAX_AFTER)}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def slugify(title: str) -> str:
    """Return a node id made of *title*: lower-case ASCII words joined by ``-`` (maybe empty)."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = _NON_SLUG.sub("-", ascii_title.lower()).strip("-")
    if len(slug) > _SLUG_MAX:
        cut = slug[:_SLUG_MAX]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut
    return slug


def steps_to_nodes(steps: object, kinds: Sequence[str], max_steps: int) -> list[dict[str, Any]]:
    """Turn a reply's ``steps`` into node dicts, or raise `StepProblems` quoting what is wrong."""
    if not isinstance(steps, list) or not steps:
        raise StepProblems(['"steps" must be a non-empty array of step objects'])
    if len(steps) > max_steps:
        raise StepProblems([f"the plan has {len(steps)} steps; at most {max_steps} are allowed: "
                            "merge some steps"])
    problems: list[str] = []
    titles: list[str] = []
    for index, step in enumerate(steps, start=1):
        if not isinstance(step, dict):
            problems.append(f"step {index} is {quote_value(step)}, not an object")
            titles.append("")
            continue
        title = step.get("title")
        if not isinstance(title, str) or not title.strip():
            problems.append(f"step {index} has \"title\": {quote_value(title)}; give it a short title")
            title = ""
        titles.append(title.strip())
    ids = _ids(titles)
    nodes: list[dict[str, Any]] = []
    for index, step in enumerate(steps, start=1):
        if not isinstance(step, dict):
            continue
        where = f"step {index} ({titles[index - 1]!r})" if titles[index - 1] else f"step {index}"
        kind = step.get("kind", "llm" if "llm" in kinds else kinds[0])
        if kind not in kinds:
            problems.append(f"{where} has \"kind\": {quote_value(kind)}; use one of {list(kinds)}")
        instructions = step.get("instructions", "")
        if not isinstance(instructions, str):
            problems.append(f"{where} has \"instructions\": {quote_value(instructions)}; use a string")
            instructions = ""
        depends = _after(step.get("after", []), index, titles, ids, where, problems)
        text = instructions.strip() or titles[index - 1]
        nodes.append({"id": ids[index - 1], "kind": kind, "instructions": text,
                      "depends_on": depends, "parameters": {"title": titles[index - 1]}})
    if problems:
        raise StepProblems(problems)
    return nodes


def _ids(titles: list[str]) -> list[str]:
    ids: list[str] = []
    taken: set[str] = set()
    for index, title in enumerate(titles, start=1):
        base = slugify(title) or f"step-{index}"
        candidate, suffix = base, 2
        while candidate in taken:
            candidate, suffix = f"{base}-{suffix}", suffix + 1
        taken.add(candidate)
        ids.append(candidate)
    return ids


def _after(
    after: object, index: int, titles: list[str], ids: list[str], where: str, problems: list[str]
) -> list[str]:
    """Resolve one step's ``after`` to the ids of earlier steps (numbers or titles)."""
    if after is None:
        return []
    if not isinstance(after, list):
        after = [after]
    earlier = "none: leave it empty" if index == 1 else (
        "step 1" if index == 2 else f"steps 1 to {index - 1}")
    depends: list[str] = []
    bad: list[object] = []
    for ref in after:
        position = _position(ref, index, titles, ids)
        if position is None:
            bad.append(ref)
        elif ids[position - 1] not in depends:
            depends.append(ids[position - 1])
    if bad:
        problems.append(f"{where} has \"after\": {quote_value(after)}; {quote_value(bad)[1:-1]} "
                        f"{'is' if len(bad) == 1 else 'are'} not the number of an earlier step "
                        f"(a step may only come after {earlier}): change only that list")
    if len(depends) > MAX_AFTER:
        problems.append(f"{where} comes after {len(depends)} steps; at most {MAX_AFTER}")
    return depends


def _position(ref: object, index: int, titles: list[str], ids: list[str]) -> int | None:
    """Return the 1-based position of the earlier step *ref* names, or ``None``."""
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int):
        return ref if 1 <= ref < index else None
    if isinstance(ref, str):
        text = ref.strip()
        if text.isdigit():
            return _position(int(text), index, titles, ids)
        folded = text.casefold()
        for position in range(1, index):
            if folded in (titles[position - 1].casefold(), ids[position - 1]):
                return position
    return None


def quote_value(value: object) -> str:
    """Return *value* as the JSON-ish text the model wrote, cut to 120 characters."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
