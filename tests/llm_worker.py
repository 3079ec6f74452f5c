"""Run a vibe with the LLM planner against BASE_URL; meant to be SIGKILLed and run again.

Usage: python tests/llm_worker.py CHECKPOINT_DIR BASE_URL DESCRIPTION

Prints the result status, nodes run and restored, and the run's total LLM requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vibe_planner import LLMConfig, MetaPlanner, Vibe, WorkflowPersistenceManager


def main() -> None:
    checkpoint_dir, base_url, description = sys.argv[1:4]
    planner = MetaPlanner(
        llm=LLMConfig(model="fake-model", base_url=base_url, api_key="sk-worker", max_retries=2),
        persistence_manager=WorkflowPersistenceManager(checkpoint_dir),
        max_concurrency=4,
        checkpoint_interval=5,
    )
    result = anyio.run(planner.execute_with_resume, Vibe(description=description))
    print(result.status, result.nodes_run, result.nodes_restored, result.usage.requests)


if __name__ == "__main__":
    main()
