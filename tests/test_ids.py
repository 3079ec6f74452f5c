"""Identifier validation: plan and checkpoint ids never escape the checkpoint folder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_planner import (
    InvalidIdentifierError,
    MetaPlanner,
    VibePlannerError,
    WorkflowPersistenceManager,
)
from vibe_planner._ids import MAX_ID_LENGTH, check_checkpoint_id, check_plan_id

GOOD_CHECKPOINT = "cp-00000001-0123456789ab"

# (value, words the reason must contain)
HOSTILE: list[Any] = [
    pytest.param("../x", "path separator", id="parent-traversal"),
    pytest.param("..", "'..'", id="dotdot"),
    pytest.param(".", "is '.'", id="dot"),
    pytest.param("a..b", "'..'", id="embedded-dotdot"),
    pytest.param("/etc/passwd", "path separator", id="absolute"),
    pytest.param("a/b", "path separator", id="slash"),
    pytest.param("a\\b", "path separator", id="backslash"),
    pytest.param("..\\..\\windows", "path separator", id="windows-traversal"),
    pytest.param("a\x00b", "NUL", id="nul"),
    pytest.param("\x00", "NUL", id="only-nul"),
    pytest.param("x" * 10_240, "longer than 128", id="10KB"),
    pytest.param("../" * 3_000, "longer than 128", id="10KB-traversal"),
    pytest.param("a\uff0fb", "must match", id="fullwidth-solidus"),
    pytest.param("\u2024\u2024", "must match", id="one-dot-leaders"),
    pytest.param("\uff0e\uff0e", "must match", id="fullwidth-dots"),
    pytest.param("a\u2215b", "must match", id="division-slash"),
    pytest.param("\u212aelvin", "must match", id="kelvin-sign"),
    pytest.param("caf\u00e9", "must match", id="accented"),
    pytest.param("a b", "must match", id="space"),
    pytest.param("a\nb", "must match", id="newline"),
    pytest.param("plan\n", "must match", id="trailing-newline"),
    pytest.param("~", "must match", id="tilde"),
    pytest.param("", "empty", id="empty"),
    pytest.param(None, "must be a str, not NoneType", id="none"),
    pytest.param(42, "must be a str, not int", id="int"),
    pytest.param(b"plan", "must be a str, not bytes", id="bytes"),
    pytest.param(Path("plan"), "must be a str, not", id="path"),
    pytest.param(["plan"], "must be a str, not list", id="list"),
]

GOOD_PLAN_IDS = [
    "a",
    "0",
    "plan",
    "vibe-0123456789abcdef01234567",
    "My_Plan.v2-final",
    "a.b.c",
    "x" * MAX_ID_LENGTH,
]


@pytest.mark.parametrize(("value", "reason"), HOSTILE)
def test_hostile_plan_ids_are_rejected(value: object, reason: str) -> None:
    with pytest.raises(InvalidIdentifierError) as info:
        check_plan_id(value)
    exc = info.value
    assert exc.kind == "plan_id"
    assert exc.value is value
    assert reason in exc.reason
    assert isinstance(exc, ValueError)
    assert isinstance(exc, VibePlannerError)
    assert str(exc).startswith("invalid plan_id ")
    assert exc.reason in str(exc)
    assert len(str(exc)) < 200  # a 10 KB value is shortened in the message


@pytest.mark.parametrize(("value", "reason"), HOSTILE)
def test_hostile_checkpoint_ids_are_rejected(value: object, reason: str) -> None:
    with pytest.raises(InvalidIdentifierError) as info:
        check_checkpoint_id(value)
    exc = info.value
    assert exc.kind == "checkpoint_id"
    assert exc.value is value
    assert reason in exc.reason
    assert str(exc).startswith("invalid checkpoint_id ")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * (MAX_ID_LENGTH + 1), id="one-too-long"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-rf", id="leading-dash"),
        pytest.param("_x", id="leading-underscore"),
        pytest.param("a:b", id="colon"),
        pytest.param(" plan", id="leading-space"),
        pytest.param("plan ", id="trailing-space"),
        pytest.param("pl\tan", id="tab"),
        pytest.param("\u0661\u0662", id="arabic-digits"),
        pytest.param("\uff41", id="fullwidth-a"),
    ],
)
def test_other_bad_plan_ids(value: str) -> None:
    with pytest.raises(InvalidIdentifierError) as info:
        check_plan_id(value)
    assert info.value.value == value


@pytest.mark.parametrize("value", GOOD_PLAN_IDS)
def test_good_plan_ids_pass_unchanged(value: str) -> None:
    assert check_plan_id(value) is value


@pytest.mark.parametrize(
    "value",
    [GOOD_CHECKPOINT, "cp-123456789-abcdefabcdef", "cp-00000000-000000000000"],
)
def test_good_checkpoint_ids_pass_unchanged(value: str) -> None:
    assert check_checkpoint_id(value) is value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("cp-1-0123456789ab", id="short-sequence"),
        pytest.param("cp-00000001-0123456789a", id="short-suffix"),
        pytest.param("cp-00000001-0123456789abc", id="long-suffix"),
        pytest.param("cp-00000001-0123456789AB", id="uppercase-hex"),
        pytest.param("cp-00000001-0123456789ag", id="non-hex"),
        pytest.param("CP-00000001-0123456789ab", id="uppercase-prefix"),
        pytest.param("cp-00000001-0123456789ab.json", id="with-extension"),
        pytest.param(GOOD_CHECKPOINT + "\n", id="trailing-newline"),
        pytest.param("cp-\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668-0123456789ab",
                     id="arabic-indic-digits"),
        pytest.param("cp-\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff11-0123456789ab",
                     id="fullwidth-digits"),
        pytest.param("plan", id="a-plan-id"),
    ],
)
def test_malformed_checkpoint_ids(value: str) -> None:
    with pytest.raises(InvalidIdentifierError) as info:
        check_checkpoint_id(value)
    assert info.value.kind == "checkpoint_id"
    assert info.value.value == value


def stays_inside(root: Path, name: str) -> bool:
    return (root / name).resolve().parent == root.resolve()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=140), st.text("./\\\x00a-_", max_size=12)))
def test_property_accepted_plan_ids_are_plain_folder_names(value: str) -> None:
    try:
        accepted = check_plan_id(value)
    except InvalidIdentifierError:
        return  # any other exception escapes and fails the test
    assert accepted is value
    assert value.isascii()
    assert 0 < len(value) <= MAX_ID_LENGTH
    assert value not in (".", "..")
    assert not value.startswith(".")
    assert PurePosixPath(value).name == value
    assert PureWindowsPath(value).name == value
    assert stays_inside(Path("/srv/checkpoints"), value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_property_accepted_checkpoint_ids_are_plain_file_stems(value: str) -> None:
    try:
        check_checkpoint_id(value)
    except InvalidIdentifierError:
        return
    assert value.isascii()
    assert value.startswith("cp-")
    assert PurePosixPath(value + ".json").name == value + ".json"


# -- public entry points check ids before touching the disk -----------------------------------

Call = Callable[[WorkflowPersistenceManager], Awaitable[object]]


def planner(manager: WorkflowPersistenceManager) -> MetaPlanner:
    return MetaPlanner(persistence_manager=manager)


ENTRY_POINTS: list[Any] = [
    pytest.param(lambda m: m.latest("../x"), "plan_id", id="manager.latest"),
    pytest.param(lambda m: m.prune("../x", keep_last=1), "plan_id", id="manager.prune"),
    pytest.param(lambda m: m.get_checkpoint("../../etc"), "checkpoint_id",
                 id="manager.get_checkpoint"),
    pytest.param(lambda m: m.list_checkpoints("../x"), "plan_id", id="manager.list_checkpoints"),
    pytest.param(lambda m: m.restore("../x"), "plan_id", id="manager.restore-plan"),
    pytest.param(lambda m: m.restore("ok", "../x"), "checkpoint_id",
                 id="manager.restore-checkpoint"),
    pytest.param(lambda m: m.verify("/etc"), "plan_id", id="manager.verify"),
    pytest.param(lambda m: m.delete_checkpoint("../cp-00000001-0123456789ab"), "checkpoint_id",
                 id="manager.delete_checkpoint"),
    pytest.param(lambda m: m.delete_plan(".."), "plan_id", id="manager.delete_plan"),
    pytest.param(lambda m: m.acquire("a\x00b"), "plan_id", id="manager.acquire"),
    pytest.param(lambda m: planner(m).execute_with_resume("a vibe", plan_id="../x"), "plan_id",
                 id="planner.execute_with_resume"),
    pytest.param(lambda m: planner(m).execute("a vibe", plan_id="../x"), "plan_id",
                 id="planner.execute"),
    pytest.param(lambda m: planner(m).plan("a vibe", plan_id="../x"), "plan_id",
                 id="planner.plan"),
    pytest.param(lambda m: planner(m).resume("../x"), "plan_id", id="planner.resume"),
    pytest.param(lambda m: planner(m).list_checkpoints("../x"), "plan_id",
                 id="planner.list_checkpoints"),
    pytest.param(lambda m: planner(m).get_checkpoint("../../etc"), "checkpoint_id",
                 id="planner.get_checkpoint"),
    pytest.param(lambda m: planner(m).delete_checkpoint("\uff0f"), "checkpoint_id",
                 id="planner.delete_checkpoint"),
]


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.anyio
@pytest.mark.parametrize(("call", "kind"), ENTRY_POINTS)
async def test_entry_points_reject_bad_ids_before_touching_disk(
    call: Call, kind: str, tmp_path: Path
) -> None:
    checkpoint_dir = tmp_path / "checkpoints"
    before = snapshot(tmp_path)
    manager = WorkflowPersistenceManager(checkpoint_dir=checkpoint_dir)
    with pytest.raises(InvalidIdentifierError) as info:
        await call(manager)
    assert info.value.kind == kind
    assert not checkpoint_dir.exists()
    assert not (tmp_path / "x").exists()
    assert snapshot(tmp_path) == before
    assert Path.cwd() == tmp_path  # the conftest's chdir: relative defaults land here too
    assert not (tmp_path / ".vibe_checkpoints").exists()


@pytest.mark.anyio
async def test_existing_checkpoint_dir_is_left_untouched(tmp_path: Path) -> None:
    checkpoint_dir = tmp_path / "checkpoints"
    (checkpoint_dir / "ok").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    before = snapshot(tmp_path)
    manager = WorkflowPersistenceManager(checkpoint_dir=checkpoint_dir)
    with pytest.raises(InvalidIdentifierError):
        await manager.prune("../x", keep_last=1)
    with pytest.raises(InvalidIdentifierError):
        await MetaPlanner(persistence_manager=manager).execute_with_resume("a vibe", plan_id="../x")
    assert snapshot(tmp_path) == before
