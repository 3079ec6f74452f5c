"""The installed `vibe-planner` console script, driven in subprocesses like a user would."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import anyio
import pytest

import vibe_planner
from vibe_planner import Checkpoint, ExecutionResult, Vibe, WorkflowPersistenceManager, WorkflowPlan
from vibe_planner.cli import main

SCRIPT = Path(sys.executable).parent / "vibe-planner"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
README = DOCS.parent.parent / "README.md"
VIBE = "a launch post for our coffee brand"
CONSTRAINT = "under 800 words"
PLAN_ID = Vibe(description=VIBE, constraints=[CONSTRAINT]).default_plan_id()
PLAN_ID_DOCS = Vibe(description=VIBE, style="warm, witty", constraints=[CONSTRAINT]).default_plan_id()
PRESS = "a press release for our new single-origin coffee"
PLAN_ID_PRESS = Vibe(description=PRESS,
                     constraints=["must be approved by legal before publishing"]).default_plan_id()
CP = ["--checkpoint-dir", "cps"]
DELAY = "VIBE_PLANNER_OFFLINE_DELAY"
EVENT_LINE = re.compile(r"^\[ *\d+\.\d\ds\] ")
# Settings that would change what the CLI prints, or hide that it flushes its own lines.
_UNWANTED = {"FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES",
             "PYTHONUNBUFFERED", DELAY}


def environment(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _UNWANTED}, **extra}


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=environment(**env),
                          capture_output=True, text=True, timeout=30, check=False)


def cli_many(cwd: Path, commands: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at once (each start-up costs about a second)."""
    procs = [subprocess.Popen([str(SCRIPT), *args], cwd=cwd, env=environment(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
    done = []
    for args, proc in zip(commands, procs, strict=True):
        with proc:
            out, err = proc.communicate(timeout=30)
        done.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    return done


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vibe-planner: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/cp-*.json"))


def stored_checkpoints(folder: Path) -> list[Checkpoint]:
    """The checkpoints of *folder* as the library reads them (a delta's file holds a part)."""
    manager = WorkflowPersistenceManager(folder)
    return [anyio.run(manager.get_checkpoint, path.stem) for path in checkpoint_files(folder)]


class LineReader:
    """Collects a child's output lines in a thread, so the test can wait for one with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout}s: {self.lines}") from None
            if line is None:
                raise AssertionError(f"output ended before the line: {self.lines}")
            self.lines.append(line)
            if predicate(line):
                return line

    def rest(self) -> str:
        self._thread.join(timeout=15)
        while (line := self._queue.get(timeout=15)) is not None:
            self.lines.append(line)
        return "".join(self.lines)


def interrupt_after_first_node(
    cwd: Path, args: Sequence[str], env: dict[str, str], during: Callable[[], None] = lambda: None
) -> tuple[int, str, str]:
    """Start a run, wait until a node completed, call *during*, press Ctrl-C; return the outcome."""
    # A child inherits an *ignored* SIGINT from its parent (a test runner may ignore it), and a
    # CLI must then keep ignoring Ctrl-C; here we want the terminal's default behaviour.
    with subprocess.Popen([str(SCRIPT), *args], cwd=cwd, env=environment(**env), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            reader = LineReader(proc.stdout)
            reader.wait_for(lambda line: line.startswith("[") and " completed (" in line)
            # Stopped while *during* runs (which may take seconds on a loaded machine), so the
            # run cannot reach its end before Ctrl-C; the SIGINT is delivered on SIGCONT.
            proc.send_signal(signal.SIGSTOP)
            try:
                during()
                proc.send_signal(signal.SIGINT)
            finally:
                proc.send_signal(signal.SIGCONT)
            code = proc.wait(timeout=15)
            return code, reader.rest(), proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One finished offline run of VIBE, and its checkpoint folder (read-only: copy it)."""
    cwd = tmp_path_factory.mktemp("first_run")
    result = cli(cwd, "run", VIBE, "--constraint", CONSTRAINT, "--checkpoint-interval", "4", *CP)
    return cwd / "cps", result


@pytest.fixture
def finished(first_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    shutil.copytree(first_run[0], tmp_path / "cps")
    return tmp_path / "cps"


# -- run, resume, plan ------------------------------------------------------------------------------
def test_version_and_python_m(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = subprocess.run([sys.executable, "-m", "vibe_planner.cli", "--version"], cwd=tmp_path,
                            env=environment(), capture_output=True, text=True, check=False)
    assert (module.returncode, module.stdout) == (0, f"vibe-planner {vibe_planner.__version__}\n")
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == module.stdout


def test_run_prints_one_line_per_event_then_a_summary(
    first_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, result = first_run
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events, summary = result.stdout.split("completed: plan", 1)
    lines = events.splitlines()
    assert all(EVENT_LINE.match(line) for line in lines), lines
    assert f"plan {PLAN_ID}: 11 nodes, planned by offline (offline: no LLM configured)" in lines[0]
    assert re.search(r"\] checkpoint cp-00000001-[0-9a-f]{12} written \(planned, 0/11\)$", lines[1])
    assert any(re.search(r"\] node outline completed \(\d+/11\)$", line) for line in lines)
    assert re.search(r"\] run completed in \d+\.\d\ds \(11/11\)$", lines[-1])
    assert summary.startswith(f" {PLAN_ID}, 11/11 nodes completed (11 run now, 0 restored)")
    assert "\nran offline: no LLM configured" in summary
    assert "\noutput of final:\n  [offline:final] Polish the draft" in summary
    assert len(checkpoint_files(folder)) >= 3


def test_run_json_prints_only_the_result(tmp_path: Path) -> None:
    result = cli(tmp_path, "run", VIBE, "--json", "--plan-id", "coffee", *CP)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    parsed = ExecutionResult.model_validate_json(result.stdout)
    assert (parsed.plan_id, parsed.status, parsed.offline) == ("coffee", "completed", True)
    assert list(parsed.outputs) == ["final"]
    assert (tmp_path / "cps" / "coffee").is_dir()


def test_failed_run_lists_failed_nodes_and_exits_1(tmp_path: Path) -> None:
    args = ["run", VIBE, "--node-timeout", "0.05", "--max-attempts", "1", *CP]
    result = cli(tmp_path, *args, VIBE_PLANNER_OFFLINE_DELAY="1")
    assert result.returncode == 1, result.stderr
    assert "] node brief FAILED: timed out\n" in result.stdout
    plan_id = Vibe(description=VIBE).default_plan_id()
    assert f"\nfailed: plan {plan_id}, 0/10 nodes completed (1 run now" in result.stdout
    assert "\nfailed nodes:\n  brief: TimeoutError: timed out\n" in result.stdout
    assert "\nskipped (a dependency failed): audience, voice," in result.stdout
    assert f"retry the failed nodes with: vibe-planner resume {plan_id} --checkpoint-dir cps\n" \
        in result.stdout


def test_plan_prints_the_dag_without_running_it(tmp_path: Path) -> None:
    tree, mermaid, as_json = cli_many(tmp_path, [
        ["plan", VIBE, "--constraint", CONSTRAINT, *CP],
        ["plan", VIBE, "--constraint", CONSTRAINT, "--format", "mermaid", *CP],
        ["plan", VIBE, "--constraint", CONSTRAINT, "--format", "json", *CP],
    ])
    assert tree.returncode == mermaid.returncode == as_json.returncode == 0
    plan = WorkflowPlan.model_validate_json(as_json.stdout)
    assert plan.plan_id == PLAN_ID and len(plan.nodes) == 11
    lines = mermaid.stdout.splitlines()
    assert lines[0] == "flowchart TD" and '    n0["brief"]' in lines
    assert sum(" --> " in line for line in lines) == sum(len(n.depends_on) for n in plan.nodes)
    lines = tree.stdout.splitlines()
    assert lines[0] == f"plan {PLAN_ID} (11 nodes, planner offline): {VIBE}"
    assert lines[1].startswith("└── final: Polish")
    assert any(line.endswith("constraint-1 (see above)") for line in lines)
    assert not (tmp_path / "cps").exists()


def test_resume_from_a_given_checkpoint(finished: Path, tmp_path: Path) -> None:
    planned = checkpoint_files(finished)[0].stem
    again = cli(tmp_path, "resume", PLAN_ID, "--checkpoint", planned, "--json", *CP)
    assert again.returncode == 0, again.stderr
    parsed = ExecutionResult.model_validate_json(again.stdout)
    assert (parsed.resumed_from, parsed.nodes_run, parsed.status) == (planned, 11, "completed")


# -- checkpoints ------------------------------------------------------------------------------------
def test_checkpoints_list_and_show(finished: Path, tmp_path: Path) -> None:
    files = checkpoint_files(finished)
    listing, of_plan, show, show_json = cli_many(tmp_path, [
        ["--checkpoint-dir", "cps", "checkpoints", "list"],
        ["checkpoints", "list", PLAN_ID, "--checkpoint-dir", "cps"],
        ["checkpoints", "show", files[-1].stem, *CP],
        ["checkpoints", "show", files[0].stem, "--json", *CP],
    ])
    assert listing.stdout == of_plan.stdout and listing.returncode == 0
    header, _, *rows = listing.stdout.splitlines()
    assert header.split() == ["ID", "PLAN", "CREATED", "REASON", "PROGRESS", "SIZE"]
    assert [row.split()[0] for row in rows] == [f.stem for f in reversed(files)]
    assert rows[0].split()[4:6] == ["final", "11/11"]
    assert rows[-1].split()[4:6] == ["planned", "0/11"]
    assert show.returncode == 0
    assert f"checkpoint   {files[-1].stem}\n" in show.stdout
    assert "\nreason       final\n" in show.stdout
    assert "\nprogress     11/11 completed, 0 failed, 0 pending\n" in show.stdout
    assert f"\nconstraints  {CONSTRAINT}\n" in show.stdout
    stored = Checkpoint.model_validate_json(files[0].read_bytes())
    assert Checkpoint.model_validate_json(show_json.stdout) == stored
    assert json.loads(show_json.stdout)["checksum"] == stored.checksum


def test_checkpoints_delete(finished: Path, tmp_path: Path) -> None:
    victim = checkpoint_files(finished)[1]
    result = cli(tmp_path, "checkpoints", "delete", victim.stem, *CP)
    assert (result.returncode, result.stdout) == (0, f"deleted checkpoint {victim.stem}\n")
    assert not victim.exists()


def test_checkpoints_prune(finished: Path, tmp_path: Path) -> None:
    files = checkpoint_files(finished)
    # The newest two are kept, and the older checkpoints their chains need (from their bases).
    newest = [json.loads(f.read_bytes()) for f in files[-2:]]
    needed_from = min(int(d.get("base", d["checkpoint_id"]).split("-")[1]) for d in newest)
    doomed = [f for f in files[:-2] if int(f.stem.split("-")[1]) < needed_from]
    kept = files[len(doomed):]
    extra = f" and {len(kept) - 2} older one(s) their chains need" if len(kept) > 2 else ""
    result = cli(tmp_path, "checkpoints", "prune", PLAN_ID, "--keep-last", "2", *CP)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        *[f"deleted checkpoint {f.stem}" for f in reversed(doomed)],
        f"plan {PLAN_ID}: deleted {len(doomed)} checkpoint(s), kept the newest 2{extra}",
    ]
    assert checkpoint_files(finished) == kept


def test_verify_names_every_corrupt_file_and_changes_nothing(finished: Path, tmp_path: Path) -> None:
    files = checkpoint_files(finished)
    latest = files[-1]
    latest.write_bytes(latest.read_bytes()[:200])
    damaged = latest.read_bytes()
    verify, listing, show, resume = cli_many(tmp_path, [
        ["checkpoints", "verify", PLAN_ID, *CP],
        ["checkpoints", "list", *CP],
        ["checkpoints", "show", latest.stem, *CP],
        ["resume", PLAN_ID, *CP],
    ])
    assert verify.returncode == 3
    assert verify.stdout.startswith(f"CORRUPT cps/{PLAN_ID}/{latest.name}: not valid JSON")
    assert len(verify.stdout.splitlines()) == 1
    assert "1 damaged file(s)" in one_error_line(verify)
    assert listing.returncode == 0
    assert re.search(rf"^{latest.stem} .* CORRUPT: not valid JSON", listing.stdout, re.MULTILINE)
    for result in (show, resume):
        assert result.returncode == 3
        assert latest.name in one_error_line(result)
    assert latest.read_bytes() == damaged
    assert checkpoint_files(finished) == files


# -- errors and interruption ------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    pytest.param(["run"], id="missing-argument"),
    pytest.param(["run", "x", "--concurrency", "0"], id="bad-number"),
    pytest.param(["checkpoints", "frobnicate"], id="unknown-command"),
    pytest.param(["checkpoints", "prune", PLAN_ID], id="missing-option"),
])
def test_argument_errors_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(r"vibe-planner: error: .+ \(see 'vibe-planner[a-z ]*--help'\)\n", captured.err)


def test_input_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    blank, hostile, unknown = cli_many(tmp_path, [
        ["run", " ", *CP], ["checkpoints", "show", "../../etc/passwd", *CP],
        ["resume", "no-such-plan", *CP],
    ])
    for result in (blank, hostile, unknown):
        assert (result.returncode, result.stdout) == (2, "")
        one_error_line(result)
    assert "invalid vibe: description: " in blank.stderr
    assert "invalid checkpoint_id '../../etc/passwd'" in hostile.stderr
    assert unknown.stderr == "vibe-planner: error: no checkpoint for plan 'no-such-plan'\n"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = "cp-00000007-0123456789ab"
    before, after = cli_many(tmp_path, [
        ["--debug", "checkpoints", "show", missing, *CP],
        ["checkpoints", "show", missing, *CP, "--debug"],
    ])
    for result in (before, after):
        assert result.returncode == 2
        assert result.stderr.startswith("Traceback (most recent call last):")
        assert "CheckpointNotFoundError" in result.stderr
        assert result.stderr.splitlines()[-1] == f"vibe-planner: error: checkpoint {missing!r} not found"


def test_ctrl_c_saves_a_cancelled_checkpoint_then_resume_finishes(tmp_path: Path) -> None:
    locked: list[subprocess.CompletedProcess[str]] = []
    code, out, err = interrupt_after_first_node(
        tmp_path, ["run", VIBE, "--constraint", CONSTRAINT, "--concurrency", "1",
                   "--checkpoint-interval", "100", *CP],
        {DELAY: "0.5"}, during=lambda: locked.append(cli(tmp_path, "resume", PLAN_ID, *CP)))
    assert locked[0].returncode == 4
    assert f"plan '{PLAN_ID}' is being run by pid=" in one_error_line(locked[0])
    assert code == 130, err
    assert err == ("vibe-planner: interrupted; progress is saved; resume with: "
                   f"vibe-planner resume {PLAN_ID} --checkpoint-dir cps\n")
    assert re.search(r"\] checkpoint cp-\S+ written \(cancelled, [1-9]/11\)\n", out)
    stored = stored_checkpoints(tmp_path / "cps")
    assert [c.reason for c in stored] == ["planned", "cancelled"]
    cancelled = stored[-1]
    assert cancelled.completed_nodes and cancelled.pending_nodes
    listing, resumed = cli_many(tmp_path, [["checkpoints", "list", PLAN_ID, *CP],
                                           ["resume", PLAN_ID, *CP]])
    assert re.search(rf"^{cancelled.checkpoint_id} .* cancelled ", listing.stdout, re.MULTILINE)
    assert resumed.returncode == 0, resumed.stderr
    restored = len(cancelled.completed_nodes)
    assert f"resumed from checkpoint {cancelled.checkpoint_id} ({restored} nodes restored" in resumed.stdout
    assert f"11/11 nodes completed ({11 - restored} run now, {restored} restored)" in resumed.stdout


def test_closed_output_cancels_the_run_quietly(tmp_path: Path) -> None:
    # `vibe-planner run ... | head -1`: the reader goes away after one line.
    with subprocess.Popen([str(SCRIPT), "run", VIBE, "--concurrency", "1", *CP], cwd=tmp_path,
                          env=environment(**{DELAY: "0.2"}), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        # The clock starts with the call, so the plan line says how long planning took.
        assert re.match(rb"\[ *\d+\.\d\ds\] plan ", proc.stdout.readline())
        proc.stdout.close()
        assert proc.wait(timeout=15) == 1
        assert proc.stderr.read() == b""
    reasons = [checkpoint.reason for checkpoint in stored_checkpoints(tmp_path / "cps")]
    assert reasons == ["planned", "cancelled"]


def test_live_display_on_a_terminal(tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = environment(TERM="xterm-256color")
    chunks: list[bytes] = []
    with subprocess.Popen([str(SCRIPT), "run", VIBE, *CP], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, stdout=secondary, stderr=subprocess.PIPE) as proc:
        os.close(secondary)
        try:
            deadline = time.monotonic() + 20
            while True:
                ready, _, _ = select.select([primary], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"no output for 20s: {chunks}"
                try:
                    data = os.read(primary, 65536)
                except OSError:  # EIO: the child has closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            code = proc.wait(timeout=15)
        finally:
            os.close(primary)
            if proc.poll() is None:
                proc.kill()
        assert proc.stderr is not None and proc.stderr.read() == b""
    screen = b"".join(chunks).decode()
    assert code == 0
    assert "\x1b[" in screen  # colours and cursor movement: the live display, not plain lines
    assert re.search(r"last checkpoint: cp-\S+ \(final\)", screen)
    assert "10/10" in screen and "running 0, failed 0" in screen
    assert not re.search(r"^\[ *\d+\.\d\ds\] ", screen, re.MULTILINE)
    assert "completed: plan " in screen and "ran offline: no LLM configured" in screen


# -- the documentation ------------------------------------------------------------------------------
def doc_blocks(kind: str, page: Path = DOCS) -> Iterator[list[str]]:
    text = page.read_text(encoding="utf-8")
    for block in re.findall(rf"^```{kind}\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        yield block.splitlines()


def normalise(line: str) -> str:
    """Hide what changes from run to run: ids, times, counts, sizes, column widths."""
    line = re.sub(r"cp-\d{8}-[0-9a-f]{12}", "cp-ID", line)
    # A size's unit too: a delta of about a kilobyte, or a snapshot cut short by ^C, is shown as
    # "812 B" or "1.1 kB", as the run's timing has it.
    line = re.sub(r"\b\d+(\.\d+)? [kMG]?B\b", "SIZE", line)
    line = re.sub(r"─+", "─", line)
    return " ".join(re.sub(r"\d+", "0", line).split())


def doc_session(page: Path = DOCS) -> list[tuple[dict[str, str], list[str], list[str]]]:
    """The ``$ vibe-planner`` commands of the console blocks, with their env and shown output."""
    commands: list[tuple[dict[str, str], list[str], list[str]]] = []
    for block in doc_blocks("console", page):
        if not any(line.startswith("$ ") for line in block):
            continue  # the README's set-up commands, tested in test_docs.py
        for line in block:
            if line.startswith("$ "):
                words = shlex.split(line[2:])
                env = dict(word.split("=", 1) for word in words if re.match(r"^[A-Z_]+=", word))
                argv = words[len(env):]
                assert argv[0] == "vibe-planner", line
                commands.append((env, argv[1:], []))
            else:
                commands[-1][2].append(line)
    return commands


@pytest.mark.parametrize(("page", "commands"), [
    pytest.param(DOCS, [["run", VIBE], ["resume", PLAN_ID_DOCS], ["checkpoints", "list"],
                        ["plan", "a haiku about tea"]], id="docs-cli"),
    pytest.param(README, [["run", VIBE], ["resume", PLAN_ID_DOCS], ["checkpoints", "list"],
                          ["run", PRESS], ["approve", PLAN_ID_PRESS], ["resume", PLAN_ID_PRESS]],
                 id="readme"),
])
def test_docs_console_session_runs_as_shown(tmp_path: Path, page: Path, commands: list[list[str]]) -> None:
    session = doc_session(page)
    assert [argv[:2] for _, argv, _ in session] == commands
    for env, argv, shown in session:
        if "^C" in shown:
            code, out, err = interrupt_after_first_node(tmp_path, argv, env)
            expected, shown = 130, [line for line in shown if line.startswith("vibe-planner:")]
        else:
            result = cli(tmp_path, *argv, **env)
            waits = any(line.startswith("waiting: plan") for line in shown)  # exit code 5
            code, out, err, expected = result.returncode, result.stdout, result.stderr, 5 if waits else 0
        assert code == expected, (argv, err)
        printed = {normalise(line) for line in (out + err).splitlines()}
        missing = [line for line in shown if line != "..." and normalise(line) not in printed]
        assert not missing, (argv, missing, out + err)


def test_docs_synopses_match_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    helps: dict[tuple[str, ...], str] = {}
    for line in [line.removeprefix("$ ") for block in doc_blocks("text") for line in block]:
        words = line.split()
        if words[0] == "vibe-planner":
            command = tuple(w for w in words[1:3] if w.isalpha() and w.islower())
        elif words[0].startswith("--"):
            command = ()  # a global option
        else:
            continue  # output, or another program
        if command not in helps:
            with pytest.raises(SystemExit) as exited:
                main([*command, "--help"])
            assert exited.value.code == 0
            helps[command] = capsys.readouterr().out
        for option in re.findall(r"--[a-z-]+", line):
            assert option in helps[command], (line, option)
    assert helps[("checkpoints", "prune")].startswith("usage: vibe-planner checkpoints prune")
    assert len(helps) == 15
