"""Run the command line with ``python -m vibe_planner.cli``."""

from . import main

raise SystemExit(main())
