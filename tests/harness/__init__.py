"""What the tests and the benchmarks share, with no pytest in it:

* ``swarm``: :class:`~tests.harness.swarm.SwarmRun`, a spec in a folder and the
  supervisor running it, and the spec builders;
* ``hosts``: several hosts of a swarm on one shared Redis;
* ``procs``: the checkout, the environment of the processes we start, finding what they
  left running, and waiting for a condition;
* ``fake_api``: a fake Anthropic Messages API (in-process, or
  ``python -m tests.harness.fake_api``);
* ``hooks``: ``on_start`` hooks that make a worker misbehave or do something on purpose
  (``on_start: tests.harness.hooks:NAME`` in a spec).

Child processes (``swarm up``, its workers, helpers run with ``-m``) find this checkout
through ``PYTHONPATH``, which :func:`tests.harness.procs.cli_env` sets.
"""
