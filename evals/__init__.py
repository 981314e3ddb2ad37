"""Evaluation tasks run on Dream checkpoints (persona simulation, ...)."""
