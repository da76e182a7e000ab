"""Prefect tasks: small, typed, one job each. Flows in `flows/` compose them into the paper's pipeline."""
