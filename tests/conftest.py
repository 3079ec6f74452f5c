from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `tests.fake_openai` and `tests.helpers` import the same way everywhere


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run the long torture modes")


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoints"
    return path


@pytest.fixture(autouse=True)
def _no_stray_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests that rely on the default ".vibe_checkpoints" write it in their own tmp dir.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("VIBE_PLANNER_MODEL", raising=False)
    os.environ.setdefault("PYTHONHASHSEED", "0")


# -- the suite's own PostgreSQL server (tests/pg.py) -------------------------------------------------


@pytest.fixture
def postgres() -> object:
    """The test PostgreSQL server (started on first use; `tests.pg.server`)."""
    from tests import pg

    return pg.server()


@pytest.fixture(autouse=True)
def _close_pg_stores() -> object:
    yield
    from tests import pg

    pg.close_stores()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import pg

    pg.stop()
