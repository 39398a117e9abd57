"""Trajectory datasets: tasks, generation, storage, import and validation."""
