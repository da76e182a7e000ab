"""Spans for agent, tool and LLM calls, exported as MLflow traces when a stage turns tracing on.

One mechanism for the whole project: code wraps work in `span(name, kind, inputs)` and sets outputs; with
tracing off (the default, and in tests) a span costs nothing. Spans nest by context, so concurrent agents
(asyncio tasks) each build their own tree under their seed's root span. Inputs are messages and tool
arguments; API keys never pass through here.
"""

from __future__ import annotations

from contextlib import contextmanager

_enabled = False


class _NullSpan:
    def set_outputs(self, outputs) -> None:
        pass

    def set_attribute(self, key, value) -> None:
        pass


def enable_tracing(tracking_uri: str, experiment_id: str) -> None:
    import mlflow

    global _enabled
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    _enabled = True


def disable_tracing() -> None:
    global _enabled
    _enabled = False


@contextmanager
def span(name: str, kind: str = "UNKNOWN", inputs: dict | None = None):
    if not _enabled:
        yield _NullSpan()
        return
    import mlflow

    with mlflow.start_span(name=name, span_type=kind) as sp:
        if inputs is not None:
            sp.set_inputs(inputs)
        yield sp
