"""Everything that runs inside a worker process. Never imports from ``launcher``."""
