"""The checkpoint and journal codecs: round trips, and damage that must never be trusted."""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path
from typing import Any

import anyio
import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import StaticPlanner, node, random_dag
from vibe_planner import (
    Checkpoint,
    CheckpointCorruptError,
    MetaPlanner,
    NodeContext,
    NodeStatus,
    Vibe,
    WorkflowPersistenceManager,
    WorkflowPlan,
)
from vibe_planner._models import MAX_JSON_DEPTH, SCHEMA_VERSION, NodeResult, ResultRecord
from vibe_planner._state import RunState, utcnow
from vibe_planner.persistence._codec import (
    checkpoint_fields,
    decode_checkpoint,
    decode_journal,
    decode_resume_point,
    encode_checkpoint,
    encode_journal,
    peek_summary,
)

VIBE = "a haiku about tea"


async def run_and_collect(checkpoint_dir: Path) -> tuple[str, dict[str, Path]]:
    # Whole documents (every snapshot a base): deltas and chains are tests/test_chains.py's.
    manager = WorkflowPersistenceManager(checkpoint_dir, base_ratio=0)
    result = await MetaPlanner(persistence_manager=manager).execute(VIBE)
    assert result.status == "completed"
    folder = checkpoint_dir / result.plan_id
    files = {cp_id: folder / f"{cp_id}.json" for cp_id in result.checkpoints_written}
    assert len(files) >= 2
    assert all(path.is_file() for path in files.values())
    return result.plan_id, files


@pytest.fixture(scope="module")
def final_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """The bytes and path of the last checkpoint of a real run (made once for the module)."""
    checkpoint_dir = tmp_path_factory.mktemp("codec") / "checkpoints"
    _, files = anyio.run(run_and_collect, checkpoint_dir)
    path = sorted(files.values())[-1]
    return path.read_bytes(), path


def corrupt(raw: bytes, path: Path) -> CheckpointCorruptError:
    with pytest.raises(CheckpointCorruptError) as info:
        decode_checkpoint(raw, path)
    assert info.value.path == path
    assert info.value.reason
    assert info.value.reason in str(info.value)
    # A resume reads checkpoints its own way (results kept as records): same verdict, same words.
    with pytest.raises(CheckpointCorruptError) as for_resume:
        decode_resume_point(raw, path)
    assert for_resume.value.reason == info.value.reason
    return info.value


def fields_of(raw: bytes) -> dict[str, Any]:
    data = orjson.loads(raw)
    del data["checksum"]
    return data


# -- checkpoint round trips ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_real_checkpoints_round_trip(tmp_path: Path) -> None:
    plan_id, files = await run_and_collect(tmp_path / "checkpoints")
    for checkpoint_id, path in files.items():
        raw = await anyio.Path(path).read_bytes()
        checkpoint = decode_checkpoint(raw, path)
        assert checkpoint.checkpoint_id == checkpoint_id
        assert checkpoint.plan_id == plan_id
        assert checkpoint.schema_version == SCHEMA_VERSION
        assert checkpoint.vibe.description == VIBE
        # Re-encoding the stored fields gives the very same bytes: the format is canonical.
        assert encode_checkpoint(fields_of(raw)) == raw
        # And the model survives a dump / encode / decode cycle unchanged.
        again = decode_checkpoint(
            encode_checkpoint(checkpoint.model_dump(mode="json", exclude={"checksum"})), path
        )
        # (Only the checksum may differ: pydantic spells the UTC offset "Z", orjson "+00:00".)
        assert again.model_copy(update={"checksum": checkpoint.checksum}) == checkpoint
        assert again.workflow_plan.order == checkpoint.workflow_plan.order


def test_final_checkpoint_contents(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, path = final_checkpoint
    checkpoint = decode_checkpoint(raw, path)
    assert isinstance(checkpoint, Checkpoint)
    assert checkpoint.reason == "final"
    assert checkpoint.pending_nodes == []
    assert checkpoint.failed_nodes == []
    assert sorted(checkpoint.completed_nodes) == sorted(checkpoint.workflow_plan.order)
    for node_id in checkpoint.completed_nodes:
        assert checkpoint.node_results[node_id].status == NodeStatus.COMPLETED


def test_checksum_covers_the_canonical_body(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, _ = final_checkpoint
    fields = fields_of(raw)
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    assert orjson.loads(raw)["checksum"] == "sha256:" + hashlib.sha256(body).hexdigest()
    assert raw.startswith(body[:-1] + b',"checksum":"sha256:')
    assert raw.endswith(b'"}')
    assert b"\n" not in raw


def test_encoding_ignores_key_order(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, _ = final_checkpoint
    fields = fields_of(raw)
    assert encode_checkpoint(dict(reversed(list(fields.items())))) == raw


def test_peek_summary(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, path = final_checkpoint
    checkpoint = decode_checkpoint(raw, path)
    assert peek_summary(raw, path) == {
        "base": checkpoint.checkpoint_id,  # a base is its own chain's base
        "checkpoint_id": checkpoint.checkpoint_id,
        "plan_id": checkpoint.plan_id,
        "run_id": checkpoint.run_id,
        "sequence": checkpoint.sequence,
        "created_at": orjson.loads(raw)["created_at"],
        "reason": "final",
        "completed_nodes": len(checkpoint.completed_nodes),
        "total_nodes": len(checkpoint.workflow_plan.nodes),
        "waiting_for": [],
    }


def same_results(raw: bytes, path: Path) -> Checkpoint:
    """Decode *raw* both ways; the resume's records must say what the checkpoint's models say."""
    checkpoint = decode_checkpoint(raw, path)
    point = decode_resume_point(raw, path)
    assert point.model_dump(exclude={"node_results"}) == checkpoint.model_dump(
        exclude={"node_results"}
    )
    assert point.workflow_plan.order == checkpoint.workflow_plan.order
    as_models = {k: NodeResult.model_validate(r) for k, r in point.node_results.items()}
    assert as_models == checkpoint.node_results
    return checkpoint


def test_result_records_have_the_fields_of_node_results() -> None:
    # The two readings of a checkpoint must not drift apart when a field is added.
    schema = pydantic.TypeAdapter(ResultRecord).json_schema()
    assert set(schema["properties"]) == set(NodeResult.model_fields)
    assert set(schema["required"]) == {
        name for name, field in NodeResult.model_fields.items() if field.is_required()
    }


@pytest.mark.anyio
async def test_resume_reading_matches_checkpoint_reading(tmp_path: Path) -> None:
    _, files = await run_and_collect(tmp_path / "checkpoints")
    for path in files.values():
        same_results(await anyio.Path(path).read_bytes(), path)


def test_a_reformatted_document_is_checked_against_its_canonical_body(
    final_checkpoint: tuple[bytes, Path],
) -> None:
    # Indented and with the checksum elsewhere: not laid out as written, so the digest is
    # checked against the canonical encoding of what was parsed, which still matches.
    raw, path = final_checkpoint
    pretty = orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    assert pretty != raw
    assert same_results(pretty, path) == decode_checkpoint(raw, path)
    damaged = pretty.replace(b'"a haiku about tea"', b'"a haiku about tee"', 1)
    assert corrupt(damaged, path).reason.startswith("checksum mismatch")


def test_deeply_nested_outputs_decode_both_ways(tmp_path: Path) -> None:
    # Deeper than pydantic's own JSON parser goes: the slow path takes over, same result.
    plan = WorkflowPlan(plan_id="deep", vibe=Vibe(description="deep"), nodes=random_dag(3, 1))
    state = RunState(plan, "run-deep")
    deep: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    for node_id in plan.order:
        state.complete(node_id, deep, attempts=1, started_at=utcnow())
    fields = checkpoint_fields(state, state.capture(), checkpoint_id="cp-00000001-0123456789ab",
                               sequence=1, reason="final")
    path = tmp_path / "deep" / "cp-00000001-0123456789ab.json"
    checkpoint = same_results(encode_checkpoint(fields), path)
    assert checkpoint.node_results[plan.order[0]].output == deep


# -- damaged checkpoints -------------------------------------------------------------------------


def test_truncation_at_every_offset(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, path = final_checkpoint
    assert corrupt(raw[:0], path).reason == "empty file"
    for offset in range(1, len(raw)):
        exc = corrupt(raw[:offset], path)
        assert exc.reason.startswith("not valid JSON (truncated or damaged)"), offset


def test_a_changed_letter_in_a_string_value_fails_the_checksum(
    final_checkpoint: tuple[bytes, Path],
) -> None:
    raw, path = final_checkpoint
    assert raw.count(b'"a haiku about tea"') == 2  # the vibe, and the plan's copy of it
    for count in (1, 2):
        damaged = raw.replace(b'"a haiku about tea"', b'"a haiku about tee"', count)
        orjson.loads(damaged)  # still parses: only the checksum can tell
        exc = corrupt(damaged, path)
        assert exc.reason.startswith("checksum mismatch (stored sha256:")
    assert b'"output":"[offline:brief]' in raw
    damaged = raw.replace(b'"output":"[offline:brief]', b'"output":"[offline:briex]', 1)
    assert corrupt(damaged, path).reason.startswith("checksum mismatch")


def test_every_single_byte_change_is_caught(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, path = final_checkpoint
    stored = orjson.loads(raw)["checksum"]
    checksum_mismatches = 0
    for index, byte in enumerate(raw):
        char = chr(byte)
        if char.isdigit():
            replacement = b"7" if char != "7" else b"3"
        elif char.isalpha():
            replacement = b"q" if char != "q" else b"z"
        else:
            replacement = b"\xff"  # never valid UTF-8
        damaged = raw[:index] + replacement + raw[index + 1 :]
        exc = corrupt(damaged, path)
        try:
            data = orjson.loads(damaged)
        except orjson.JSONDecodeError:
            continue
        if data.get("schema_version") == SCHEMA_VERSION and data.get("checksum") == stored:
            # It parses and claims the same checksum: the digest must give it away.
            assert exc.reason.startswith("checksum mismatch"), (index, exc.reason)
            checksum_mismatches += 1
    assert checksum_mismatches > len(raw) // 2


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        pytest.param(b"", "empty file", id="empty"),
        pytest.param(b"   ", "not valid JSON", id="blank"),
        pytest.param(b"\x00" * 64, "not valid JSON", id="zeros"),
        pytest.param(b"\xff\xfe{}", "not valid JSON", id="bad-utf8"),
        pytest.param(b"[]", "top level is a JSON list", id="empty-array"),
        pytest.param(b'[{"schema_version": 1}]', "top level is a JSON list", id="array"),
        pytest.param(b'"cp"', "top level is a JSON str", id="string"),
        pytest.param(b"null", "top level is a JSON NoneType", id="null"),
        pytest.param(b'{"foo": 1}', "no integer schema_version", id="other-schema"),
        pytest.param(b'{"schema_version": "1"}', "no integer schema_version", id="version-str"),
        pytest.param(b'{"schema_version": true}', "no integer schema_version", id="version-bool"),
        pytest.param(b'{"schema_version": 1.0}', "no integer schema_version", id="version-float"),
        pytest.param(b'{"schema_version": 1}', "missing or malformed checksum", id="no-checksum"),
        pytest.param(b'{"schema_version": 1, "checksum": "md5:00"}',
                     "missing or malformed checksum", id="other-digest"),
        pytest.param(b'{"schema_version": 1, "checksum": 5}', "missing or malformed checksum",
                     id="checksum-int"),
    ],
)
def test_documents_that_are_not_checkpoints(raw: bytes, words: str, tmp_path: Path) -> None:
    path = tmp_path / "p" / "cp-00000001-0123456789ab.json"
    assert words in corrupt(raw, path).reason


@pytest.mark.parametrize("version", [99, SCHEMA_VERSION + 1, 0, -1])
def test_unsupported_schema_version(
    version: int, final_checkpoint: tuple[bytes, Path]
) -> None:
    raw, path = final_checkpoint
    fields = fields_of(raw)
    fields["schema_version"] = version
    exc = corrupt(encode_checkpoint(fields), path)  # a correct checksum: the version decides
    assert exc.reason.startswith(f"unsupported schema_version {version} ")
    assert f"1 to {SCHEMA_VERSION}" in exc.reason


def test_valid_checksum_but_wrong_schema(tmp_path: Path) -> None:
    path = tmp_path / "p" / "cp-00000001-0123456789ab.json"
    exc = corrupt(encode_checkpoint({"schema_version": 1, "foo": 1}), path)
    assert exc.reason.startswith("does not match the checkpoint schema: ")


def test_valid_checksum_but_invalid_plan(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, path = final_checkpoint
    fields = fields_of(raw)
    nodes = fields["workflow_plan"]["nodes"]
    nodes[0]["depends_on"] = [nodes[-1]["id"]]  # closes a cycle through the whole plan
    exc = corrupt(encode_checkpoint(fields), path)
    assert "cycle" in exc.reason


def test_file_name_differs_from_checkpoint_id(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, path = final_checkpoint
    renamed = path.with_name("cp-99999999-0123456789ab.json")
    exc = corrupt(raw, renamed)
    stored_id = path.stem
    assert exc.path == renamed
    assert f"file name says 'cp-99999999-0123456789ab' but the document says {stored_id!r}" in (
        exc.reason
    )


def test_file_in_another_plan_folder(final_checkpoint: tuple[bytes, Path]) -> None:
    raw, path = final_checkpoint
    moved = path.parent.with_name("other-plan") / path.name
    assert "stored in folder 'other-plan'" in corrupt(raw, moved).reason


@pytest.mark.parametrize(
    ("change", "words"),
    [
        pytest.param(lambda f: f.update(plan_id="elsewhere"), "differs from its plan's",
                     id="plan-id"),
        pytest.param(lambda f: f["node_results"].update(ghost=f["node_results"]["brief"]),
                     "results for unknown nodes ['ghost']", id="unknown-result"),
        pytest.param(lambda f: f["node_results"].pop("brief"),
                     "node 'brief' listed as completed without a completed result",
                     id="completed-without-result"),
    ],
)
def test_inconsistent_documents(
    change: Any, words: str, final_checkpoint: tuple[bytes, Path]
) -> None:
    raw, path = final_checkpoint
    fields = fields_of(raw)
    assert "brief" in fields["completed_nodes"]
    change(fields)
    assert words in corrupt(encode_checkpoint(fields), path).reason


# -- journals ------------------------------------------------------------------------------------

RECORDS: list[dict[str, Any]] = [
    {"run": "r1", "result": {"node_id": "brief", "status": "completed", "output": "Tea."}},
    {"run": "r1", "result": {"node_id": "voice", "status": "completed", "output": {"k": [1, 2.5]}}},
    {"run": "r1", "result": {"node_id": "caf\u00e9", "status": "completed", "output": None}},
    {"run": "r1", "result": {"node_id": "end", "status": "completed", "output": "line\nbreak"}},
]


def line_spans(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of each line including its newline."""
    spans, start = [], 0
    for line in raw.splitlines(keepends=True):
        spans.append((start, start + len(line)))
        start += len(line)
    return spans


def test_journal_round_trip() -> None:
    raw = encode_journal(RECORDS)
    journal = decode_journal(raw)
    assert journal.records == RECORDS
    assert journal.ignored_bytes == 0
    assert journal.problem is None
    lines = raw.splitlines(keepends=True)
    assert len(lines) == len(RECORDS)
    for line, record in zip(lines, RECORDS, strict=True):
        assert re.fullmatch(rb"[0-9a-f]{8} \{.*\}\n", line, re.DOTALL)
        payload = line[9:-1]
        assert orjson.loads(payload) == record
        assert int(line[:8], 16) == zlib.crc32(payload)


def test_empty_journal() -> None:
    assert encode_journal([]) == b""
    journal = decode_journal(b"")
    assert (journal.records, journal.ignored_bytes, journal.problem) == ([], 0, None)


def test_journal_encoding_is_canonical_and_accepts_any_iterable() -> None:
    assert encode_journal(iter(RECORDS)) == encode_journal(RECORDS)
    shuffled = [dict(reversed(list(r.items()))) for r in RECORDS]
    assert encode_journal(shuffled) == encode_journal(RECORDS)


def test_torn_last_line_is_ignored() -> None:
    whole = encode_journal(RECORDS)
    last_start = line_spans(whole)[-1][0]
    for cut in range(last_start + 1, len(whole)):
        journal = decode_journal(whole[:cut])
        assert journal.records == RECORDS[:-1], cut
        assert journal.problem == "torn last record (no newline)"
        assert journal.ignored_bytes == cut - last_start


def test_line_cut_at_its_newline_is_a_clean_prefix() -> None:
    whole = encode_journal(RECORDS)
    for count, (_, end) in enumerate(line_spans(whole), start=1):
        journal = decode_journal(whole[:end])
        assert journal.records == RECORDS[:count]
        assert journal.problem is None


@pytest.mark.parametrize("mask", [0x01, 0x10, 0x20, 0x40, 0x80, 0xFF])
def test_flipped_byte_in_record_k_keeps_the_records_before_it(mask: int) -> None:
    raw = encode_journal(RECORDS)
    spans = line_spans(raw)
    for k, (start, end) in enumerate(spans):
        for index in range(start, end):
            damaged = bytearray(raw)
            damaged[index] ^= mask
            journal = decode_journal(bytes(damaged))
            assert journal.records == RECORDS[:k], (k, index, mask)
            assert journal.problem is not None
            assert journal.ignored_bytes == len(raw) - start


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda crc: b" " + crc[1:], id="leading-space"),
        pytest.param(lambda crc: b"+" + crc[1:], id="plus-sign"),
        pytest.param(lambda crc: b"0_" + crc[2:], id="underscore"),
        pytest.param(lambda crc: crc.upper(), id="uppercase"),
    ],
)
def test_crc_must_be_written_exactly_as_encoded(spelling: Any) -> None:
    # `int(..., 16)` reads all of these as the same number; a changed byte is still damage.
    record = next(
        {"n": n} for n in range(10_000)
        if (line := encode_journal([{"n": n}]))[:2] == b"00" and re.search(rb"[a-f]", line[:8])
    )
    good = encode_journal([{"first": True}])
    line = encode_journal([record])
    altered = spelling(line[:8]) + line[8:]
    assert altered != line
    journal = decode_journal(good + altered)
    assert journal.records == [{"first": True}]
    assert journal.problem == f"damaged record at byte {len(good)}"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"\n", id="blank-line"),
        pytest.param(b"00000000\n", id="crc-only"),
        pytest.param(b"%08x [1]\n" % zlib.crc32(b"[1]"), id="array-record"),
        pytest.param(b"%08x 42\n" % zlib.crc32(b"42"), id="number-record"),
        pytest.param(b"%08x {bad\n" % zlib.crc32(b"{bad"), id="bad-json-good-crc"),
        pytest.param(b"%08x\t{}\n" % zlib.crc32(b"{}"), id="tab-separator"),
        pytest.param(b"%08x  {}\n" % zlib.crc32(b"{}"), id="two-spaces"),
        pytest.param(b"%09x {}\n" % zlib.crc32(b"{}"), id="nine-digit-crc"),
    ],
)
def test_malformed_journal_lines_end_the_trusted_part(line: bytes) -> None:
    head = encode_journal(RECORDS[:2])
    tail = encode_journal(RECORDS[2:])
    journal = decode_journal(head + line + tail)
    assert journal.records == RECORDS[:2]
    assert journal.problem == f"damaged record at byte {len(head)}"
    assert journal.ignored_bytes == len(line) + len(tail)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = json_scalars | st.lists(json_scalars, max_size=3)
journal_records = st.lists(
    st.dictionaries(st.text(max_size=6), json_values, max_size=3), max_size=6
)


@settings(max_examples=200, deadline=None)
@given(journal_records, st.data())
def test_property_truncated_journals_decode_to_a_prefix(
    records: list[dict[str, Any]], data: st.DataObject
) -> None:
    raw = encode_journal(records)
    assert decode_journal(raw).records == records
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    journal = decode_journal(raw[:cut])
    complete_lines = raw[:cut].count(b"\n")
    assert journal.records == records[:complete_lines]
    assert (journal.problem is None) == (journal.ignored_bytes == 0)


@settings(max_examples=200, deadline=None)
@given(journal_records.filter(bool), st.data())
def test_property_damaged_journals_decode_to_a_prefix(
    records: list[dict[str, Any]], data: st.DataObject
) -> None:
    raw = encode_journal(records)
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    damaged = bytearray(raw)
    damaged[index] ^= mask
    journal = decode_journal(bytes(damaged))
    damaged_record = raw[:index].count(b"\n")
    assert journal.records == records[:damaged_record]
    assert journal.problem is not None


# -- checkpoints encoded in pieces ---------------------------------------------------------------


def plainly_encoded(fields: dict[str, Any]) -> bytes:
    """The checkpoint format by its definition: one canonical dump, checksum spliced in."""
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    checksum = "sha256:" + hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"checksum":"' + checksum.encode() + b'"}'


def test_a_large_runs_snapshot_is_the_plain_canonical_encoding() -> None:
    # Big enough that the node results and the plan's nodes are encoded in several slices.
    nodes = random_dag(300, seed=3, kind="work")
    plan = WorkflowPlan(plan_id="big", vibe=Vibe(description=VIBE), nodes=nodes, planner="static")
    state = RunState(plan, "run-1", {"who": "test"})
    for index, node_id in enumerate(plan.order):
        output = {"n": index, "text": node_id * 40} if index % 3 else [index, None, 1.5]
        state.complete(node_id, output, attempts=1, started_at=utcnow())
    fields = checkpoint_fields(state, state.capture(), checkpoint_id="cp-1", sequence=1, reason="final")
    plain = fields | {"workflow_plan": plan.model_dump(mode="json"),
                      "vibe": plan.vibe.model_dump(mode="json")}
    assert encode_checkpoint(fields) == plainly_encoded(plain)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.dictionaries(st.text(max_size=5), json_values | st.dictionaries(st.text(max_size=3), json_values),
                    min_size=50, max_size=200),
)
def test_property_encoding_in_pieces_is_byte_identical(
    small: dict[str, Any], big: dict[str, Any]
) -> None:
    # Unicode keys: the pieces must come in the order orjson's own key sort gives.
    fields = small | {"node_results": big, "schema_version": 1}
    assert encode_checkpoint(fields) == plainly_encoded(fields)


# -- the fast path is pinned -------------------------------------------------------------------
@pytest.mark.parametrize("decode", [decode_checkpoint, decode_resume_point], ids=["checkpoint", "resume"])
def test_a_canonical_document_is_decoded_without_parsing_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decode: Any
) -> None:
    """Bytes laid out as `encode_checkpoint` writes them are validated straight from JSON: the
    document is never built by `orjson.loads` (half the time of a large resume). If the fast
    path were off, the patched `orjson.loads` below would fail the decode."""
    async def work(ctx: NodeContext) -> dict[str, Any]:
        return {"id": ctx.node.id, "inputs": sorted(ctx.inputs)}

    manager = WorkflowPersistenceManager(tmp_path / "cp", base_ratio=0)  # every snapshot a base
    planner = MetaPlanner(planner=StaticPlanner([node("a"), node("b", "a")]), handlers={"work": work},
                          persistence_manager=manager)
    result = anyio.run(planner.execute, "fast path")
    path = tmp_path / "cp" / result.plan_id / f"{result.checkpoints_written[-1]}.json"
    raw = path.read_bytes()

    def no_parsing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the slow path parsed the document")

    monkeypatch.setattr(orjson, "loads", no_parsing)
    checkpoint = decode(raw, path)
    assert checkpoint.completed_nodes == ["a", "b"]
    assert anyio.run(manager.get_checkpoint, result.checkpoints_written[-1]).reason == "final"
