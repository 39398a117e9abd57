"""Prefect flows: thin orchestration over the gfm library."""
