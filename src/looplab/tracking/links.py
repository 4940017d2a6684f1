"""Where to look at a run: the hint a closing line or a sweep's summary prints, naming the
store the run went to. Every MLflow UI link opens the training-runs view
(`?workflowType=machine_learning`), never the GenAI overview MLflow opens by default."""

from __future__ import annotations

import shlex

from looplab.core.paths import default_store_uri

ML_VIEW = "workflowType=machine_learning"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page on an MLflow server, in the training-runs view."""
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def store_option(uri: str) -> str:
    """` --tracking-uri URI` for a `looplab` command, unless `uri` is its default store."""
    return "" if uri == default_store_uri() else f" --tracking-uri {shlex.quote(uri)}"


def run_hint(uri: str, experiment_id: str | None, run_id: str) -> str:
    """`see it at LINK` on a server; else the `looplab ui` command that opens this store."""
    if is_server(uri) and experiment_id:
        return f"see it at {run_link(uri, experiment_id, run_id)}"
    if is_server(uri):
        return f"see it with `looplab runs{store_option(uri)}`"
    return f"see it with `looplab ui{store_option(uri)}`"


def sweep_hint(uri: str, experiment_id: str | None, parent_id: str) -> str:
    """The commands (or the link) that show a sweep's jobs, for the store they went to."""
    option = store_option(uri)
    commands = f"`looplab runs --last{option}`, `looplab plot --last --out curves.png{option}`"
    if is_server(uri) and experiment_id:
        return f"{commands}, {run_link(uri, experiment_id, parent_id)}"
    return f"{commands}, `looplab ui{option}`"
