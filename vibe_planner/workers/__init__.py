"""Workers: processes that run plans queued in a PostgreSQL store (see docs/scaling.md).

`vibe_planner.Worker` is the public face; this package's modules are imported from it
directly (not re-exported here, so that importing the queue does not import the façade).
"""
