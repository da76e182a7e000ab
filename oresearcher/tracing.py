"""Spans for agent, tool and LLM calls, exported as MLflow traces when a stage turns tracing on.

One mechanism for the whole project: code wraps work in `span(name, kind, inputs)` and sets outputs; with
tracing off (the default, and in tests) a span costs nothing. Spans nest by context, so concurrent agents
(asyncio tasks) each build their own tree under their seed's root span. Every root span is attached to the
stage's MLflow run (`mlflow.sourceRun`), so the run page lists its traces; the stage's run is created with
`MlflowClient`, not made active, because the active run is thread-local and Prefect runs tasks in threads.
Inputs are messages and tool arguments; API keys never pass through here.
"""

from __future__ import annotations

from contextlib import contextmanager

_enabled = False
_run_id: str | None = None


class _NullSpan:
    def set_outputs(self, outputs) -> None:
        pass

    def set_attribute(self, key, value) -> None:
        pass


def enable_tracing(tracking_uri: str, experiment_id: str, run_id: str) -> None:
    import mlflow

    global _enabled, _run_id
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    _enabled, _run_id = True, run_id


def disable_tracing() -> None:
    import mlflow

    global _enabled, _run_id
    if _enabled:
        mlflow.flush_trace_async_logging()  # every trace of the stage is stored before its run ends
    _enabled, _run_id = False, None


@contextmanager
def span(name: str, kind: str = "UNKNOWN", inputs: dict | None = None):
    if not _enabled:
        yield _NullSpan()
        return
    import mlflow

    root = mlflow.get_current_active_span() is None
    with mlflow.start_span(name=name, span_type=kind, run_id=_run_id if root else None) as sp:
        if inputs is not None:
            sp.set_inputs(inputs)
        yield sp
