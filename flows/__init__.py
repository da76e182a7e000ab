"""Prefect flows: the paper's pipeline, stage by stage, each readable in a page."""
