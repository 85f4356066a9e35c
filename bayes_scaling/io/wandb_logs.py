"""Weights & Biases: run-history exports, panel CSVs and (with ``wandb``) the public API.

A run-history export is ``run.history()`` or ``run.scan_history()`` saved as CSV or
Parquet: one row per logged step, ``_step``, ``_runtime``, ``_timestamp`` and one column
per metric (``train/loss``, ...), empty where a metric was not logged at that step. The
file holds one run, named by the file name, or several told apart by a ``run`` column.

A panel CSV ("Export panel data" in the UI) has the x axis first (``Step``, or the metric
chosen as x axis) and one column ``<run> - <metric>`` per run, with ``__MIN`` and
``__MAX`` companions (the band of a grouped or smoothed line; ignored). A custom x axis
is also kept as a tag of every run, so it can serve as the tokens tag.

``wandb://entity/project`` (every run) or ``wandb://entity/project/run_id`` reads the
same history through ``wandb.Api`` when the ``wandb`` package is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .logs import RunLog, RunRef, curves_from_frame, read_ref, strip_suffix

__all__ = ["EXPORT_SUFFIXES", "URL_PREFIX", "api_refs", "export_refs", "read_export", "runs_from_history"]

EXPORT_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".pq")
URL_PREFIX = "wandb://"
STEP = "_step"
RUN_COLUMN = "run"
#: History columns W&B adds itself; not metrics.
SYSTEM_COLUMNS = ("_step", "_runtime", "_timestamp", "_wandb", RUN_COLUMN)
PANEL_SEPARATOR = " - "
PANEL_BAND = ("__MIN", "__MAX")


def export_refs(path: Path) -> list[RunRef]:
    return [read_ref(log, str(path)) for log in read_export(path)]


def read_export(path: Path) -> list[RunLog]:
    """Runs of a W&B run-history export or panel CSV.

    Raises
    ------
    DataError
        Unreadable file, or neither a ``_step`` column nor ``<run> - <metric>`` columns.
    """
    path = Path(path)
    try:
        frame = pd.read_parquet(path) if path.name.lower().endswith((".parquet", ".pq")) else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read W&B export {path}: {exc}") from exc
    if STEP in frame.columns:
        return runs_from_history(frame, str(path), strip_suffix(path.name, EXPORT_SUFFIXES))
    panel_columns = [c for c in frame.columns if PANEL_SEPARATOR in str(c)]
    if panel_columns and PANEL_SEPARATOR not in str(frame.columns[0]):
        return _runs_from_panel(frame, str(path))
    raise DataError(
        f"{path}: not a W&B export: no '_step' column (run history) and no '<run> - <metric>' columns (panel CSV); "
        f"columns: {list(map(str, frame.columns))[:20]}"
    )


def runs_from_history(frame: pd.DataFrame, source: str, default_name: str) -> list[RunLog]:
    """Runs of a history table (``_step`` and metric columns; an optional ``run`` column)."""
    frame = frame[frame[STEP].notna()]
    groups = frame.groupby(RUN_COLUMN, sort=False) if RUN_COLUMN in frame.columns else [(default_name, frame)]
    logs = []
    for name, rows in groups:
        metrics = [c for c in rows.columns if c not in SYSTEM_COLUMNS]
        curves = curves_from_frame(rows, rows[STEP].to_numpy(dtype=np.int64), metrics)
        logs.append(RunLog(str(name), "wandb", (source,), curves, tuple(sorted(curves))))
    return logs


def _runs_from_panel(frame: pd.DataFrame, source: str) -> list[RunLog]:
    x_name = str(frame.columns[0])
    x = pd.to_numeric(frame[x_name], errors="coerce").to_numpy(dtype=float)
    columns: dict[str, list] = {}
    for column in frame.columns[1:]:
        column = str(column)
        if column.endswith(PANEL_BAND) or PANEL_SEPARATOR not in column:
            continue
        run = column.rpartition(PANEL_SEPARATOR)[0]
        columns.setdefault(run, []).append(column)
    logs = []
    for run, run_columns in columns.items():
        rows = frame[np.isfinite(x) & frame[run_columns].notna().any(axis=1).to_numpy()]
        step = pd.to_numeric(rows[x_name]).to_numpy(dtype=float)
        renamed = rows[run_columns].rename(columns=lambda c: c.rpartition(PANEL_SEPARATOR)[2])
        if x_name != "Step":  # a custom x axis (tokens, samples) is a tag too
            renamed = renamed.assign(**{x_name: step})
        curves = curves_from_frame(renamed, step.astype(np.int64), renamed.columns)
        logs.append(RunLog(run, "wandb", (source,), curves, tuple(sorted(curves))))
    return logs


def api_refs(url: str) -> list[RunRef]:
    """Runs of ``wandb://entity/project[/run_id]`` through ``wandb.Api`` (full history, no sampling).

    Raises
    ------
    DataError
        ``wandb`` not installed, a malformed URL, an API error, or two runs with one name.
    """
    parts = url[len(URL_PREFIX) :].strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError(f"{url}: expected wandb://entity/project or wandb://entity/project/run_id")
    try:
        import wandb
    except ImportError as exc:
        raise DataError(f"{url}: reading from W&B needs the wandb package (pip install wandb), or export the run history to CSV") from exc
    try:
        api = wandb.Api()
        runs = [api.run("/".join(parts))] if len(parts) == 3 else list(api.runs("/".join(parts)))
        logs = []
        for run in runs:
            history = pd.DataFrame.from_records(list(run.scan_history()))
            if STEP not in history.columns:
                raise DataError(f"{url}: run {run.name!r} ({run.id}) has no logged history")
            logs.extend(runs_from_history(history.drop(columns=[RUN_COLUMN], errors="ignore"), f"{URL_PREFIX}{parts[0]}/{parts[1]}/{run.id}", run.name))
    except DataError:
        raise
    except Exception as exc:  # the API raises its own errors (network, auth, not found)
        raise DataError(f"{url}: W&B API error: {exc}") from exc
    names = pd.Series([log.name for log in logs])
    if names.duplicated().any():
        raise DataError(f"{url}: several runs are named {names[names.duplicated()].iloc[0]!r}; rename them in W&B or export them to files")
    return [read_ref(log, log.sources[0]) for log in logs]
