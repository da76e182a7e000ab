"""Training metrics into MLflow: every number a trainer logs, on the stage's run, at its optimizer step.

Metrics go through an `MlflowClient` with the run id passed explicitly (the fluent API's active run is thread-local
and Prefect runs tasks in threads), namespaced `train/…` so runs of every stage compare. Apart from
`oresearcher.registry` so that the command line's error handling can import the registry's errors without
loading transformers.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback


class MlflowMetrics(TrainerCallback):
    """Every number the trainer logs, as `<prefix><name>` at the optimizer step it belongs to."""

    def __init__(self, client, run_id: str, prefix: str = "train/"):
        self.client, self.run_id, self.prefix = client, run_id, prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(self.prefix + k, float(v), now, state.global_step) for k, v in (logs or {}).items()
                   if isinstance(v, int | float) and not isinstance(v, bool)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
