"""The ``vibe-planner`` command line: run, resume and plan vibes, and manage checkpoints.

Built on the public API of `vibe_planner` only. See ``docs/cli.md`` for the reference.
"""

from ._app import main as main

__all__ = ["main"]
