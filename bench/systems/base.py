"""What every adapter provides: a `Runner` for one workload, one variant, one work folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..measure import NodeBody

__all__ = ["RunEnv", "Runner"]


@dataclass(frozen=True)
class RunEnv:
    """Where and how a run happens."""

    workdir: Path
    """A folder of this run (checkpoints, databases); empty unless resuming."""
    body: NodeBody
    """The node body to run for each node."""
    resume: bool = False
    """Continue from the checkpoints in *workdir* instead of starting afresh."""


class Runner(Protocol):
    """One prepared run. Building the plan or graph happens before, and is not timed as the run."""

    async def run(self) -> dict[str, Any]:
        """Run (or resume) the workload to the end.

        Returns at least ``completed`` (nodes completed in the final state) and ``status``;
        ``checkpoints`` (number written) where the system says.
        """
        ...

    async def recorded(self) -> set[str]:
        """Ids of the nodes that the persisted state records as completed (before resuming)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Checkpoint figures after the run: ``cp_files``, ``cp_bytes``, ``cp_largest`` and
        any on-loop timings the adapter took."""
        ...
