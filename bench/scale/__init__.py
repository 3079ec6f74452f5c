"""``python -m bench.scale``: workers on PostgreSQL (throughput, takeover) and store overhead."""
