"""Benchmarks of vibe_planner side by side with LangGraph and vibe-aigc (``python -m bench``).

See ``docs/benchmarks.md`` for what is measured and the latest numbers.
"""
