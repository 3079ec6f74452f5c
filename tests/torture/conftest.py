"""Fixtures of the torture suite: the long mode switch, the fork server and the tally.

``pytest tests/torture`` runs the fast subset (every CI run); ``pytest tests/torture --long``
(the option is declared in ``tests/conftest.py``) scales every loop up: 1,000 kills, every
byte offset, more racing processes. See ``docs/torture.md``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.torture.support import TALLY, ForkServer, Tally


@pytest.fixture(scope="session")
def long_mode(request: pytest.FixtureRequest) -> bool:
    """True under ``--long``: loops run at their full sizes."""
    return bool(request.config.getoption("--long"))


@pytest.fixture(scope="session")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.counts:
        terminalreporter.section("torture tally")
        for line in TALLY.lines():
            terminalreporter.write_line(line)
