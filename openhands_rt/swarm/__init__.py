"""Sandboxes on a Docker Swarm: the runtime and what it needs across hosts (docs/scale-out.md)."""
