"""swarm beside RQ, arq, Celery and Dramatiq: ``python -m bench.peers.throughput`` and
``python -m bench.peers.recovery``. The peers' task modules here (tasks_*.py, submit.py,
peer_common.py) run as scripts in each peer's own venv, not as part of this package."""
