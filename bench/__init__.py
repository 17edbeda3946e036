"""blipserver benchmarks: ingest, live fan-out and queries (see README.md)."""
