"""swarm's benchmarks, run from the checkout as ``python -m bench.NAME`` (see
docs/benchmarks.md). bench/_common.py holds their own helpers; what they share with the
tests is in ``tests.harness``."""
