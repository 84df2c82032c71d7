"""The supervising side of swarm: the CLI, the spec, the embedded Redis and the
supervisor. Runs in the process that ``swarm up`` starts; imports from ``workers``."""
