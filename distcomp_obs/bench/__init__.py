"""`distcomp bench`: the latency proxy, the A/B runner and its report (docs/BENCHMARKS.md)."""
