"""swarm's tests (``python -m pytest`` from the checkout). A package, so that the tests
and the benchmarks (``bench/``) import what they share as ``tests.harness``."""
