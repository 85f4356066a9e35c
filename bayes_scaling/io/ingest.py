"""Training logs in, a validated runs table out.

:func:`ingest` finds the runs in each source (TensorBoard directories, W&B exports or
``wandb://`` URLs, ``trainer_state.json`` files, Megatron stdout logs), completes them
with the mapping file (family, parameter count, loss tag and unit, tokens), cleans each
loss curve by the rules below and checks the result with :func:`bayes_scaling.data.load_runs`,
the validation ``fit`` applies. Rules, in order, each counted per run:

1. restarts: a step that does not exceed the one logged before it starts a new segment
   (a job resumed from an earlier checkpoint); the later segment wins, so a value is kept
   only when every value logged after it has a larger step;
2. non-finite losses (NaN, inf) are dropped;
3. the loss is converted to nats per token (bits x ln 2; ln of a perplexity);
4. spikes are dropped (:class:`~bayes_scaling.io.mapping.Cleaning`);
5. rows without tokens are dropped: step 0 (nothing seen yet) and, with a tokens tag,
   steps outside the range the tag was logged over.

The table has the runs-table columns (``family``, ``model`` = run name, ``num_params``,
``tokens``, ``loss`` in nats) plus ``step`` and provenance: ``source`` (the file) and
``tag`` (the logged scalar); ``flops`` when a Trainer state gives ``total_flos``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import load_runs
from ..errors import DataError
from . import megatron, tensorboard_events, trainer_state, wandb_logs
from .logs import RunLog, RunRef
from .mapping import Cleaning, Mapping, RunSettings, read_mapping

__all__ = ["OUTPUT_SUFFIXES", "IngestResult", "check_output_path", "discover", "ingest", "later_segment_wins", "spike_mask", "to_nats", "write_runs"]

OUTPUT_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
#: Per-run counts of the cleaning rules, in the order they apply.
COUNTS = ("logged", "restarts", "superseded", "non_finite", "spikes", "no_tokens")


@dataclass(frozen=True)
class IngestResult:
    """The validated runs table and what happened to each run on the way.

    Attributes
    ----------
    table : DataFrame
        The runs table (validated like ``fit``'s input), with ``step``, ``source``, ``tag``.
    report : DataFrame
        One row per run: family, format, parameter count and where it came from, loss tag
        and unit, tokens rule, rows kept, tokens range, last and planned step, and the
        counts of each cleaning rule (``restarts`` counts step rewinds, ``superseded`` the
        values they replaced).
    excluded : tuple of str
        Runs left out by the mapping's ``exclude`` patterns.
    """

    table: pd.DataFrame
    report: pd.DataFrame
    excluded: tuple[str, ...] = ()

    def summary(self) -> str:
        """One paragraph of totals, for the end of the command's output."""
        total = self.report[list(COUNTS)].sum()
        families = self.table["family"].nunique()
        parts = [
            (
                f"{len(self.table)} rows from {len(self.report)} runs in {families} famil{'y' if families == 1 else 'ies'} "
                f"(of {int(total['logged'])} loss values logged)"
            ),
            f"{int(total['restarts'])} restart{'' if total['restarts'] == 1 else 's'} replaced {int(total['superseded'])} values (the later segment wins)",
            f"dropped {int(total['non_finite'])} non-finite, {int(total['spikes'])} spikes, {int(total['no_tokens'])} without tokens",
        ]
        truncated = int(self.report["truncated_records"].sum()) if "truncated_records" in self.report else 0
        if truncated:
            parts.append(f"skipped {truncated} truncated TensorBoard records")
        if self.excluded:
            parts.append(f"excluded {len(self.excluded)} runs: {', '.join(self.excluded)}")
        return "; ".join(parts)


def check_output_path(path) -> Path:
    """The output path, checked before any work: a known table suffix and an existing folder."""
    path = Path(path)
    if not path.name.lower().endswith(OUTPUT_SUFFIXES):
        raise DataError(f"{path}: the runs table must end with one of {list(OUTPUT_SUFFIXES)}")
    if not path.parent.is_dir():
        raise DataError(f"{path}: folder {path.parent} does not exist")
    return path


def write_runs(table: pd.DataFrame, path) -> Path:
    """Write a runs table atomically (a temporary file renamed into place); returns the path."""
    path = check_output_path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, compression="gzip" if path.name.lower().endswith(".gz") else None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def discover(sources) -> list[RunRef]:
    """The runs in each source, not read yet where reading can wait (TensorBoard).

    A directory is searched for TensorBoard event files (one run per folder) and
    ``trainer_state.json`` files (one run per output folder); a file is read by its
    name: ``*tfevents*`` (TensorBoard), ``*.json`` (Trainer state), ``.csv``,
    ``.csv.gz``, ``.parquet`` (W&B export), anything else (Megatron log).

    Raises
    ------
    DataError
        A missing source, a directory without logs, or two runs with one name.
    """
    refs: list[RunRef] = []
    for source in sources:
        text = str(source)
        if text.startswith(wandb_logs.URL_PREFIX):
            refs += wandb_logs.api_refs(text)
            continue
        path = Path(source)
        if not path.exists():
            raise DataError(f"source not found: {path}")
        if path.is_dir():
            found = tensorboard_events.find_runs(path) + trainer_state.find_runs(path)
            if not found:
                raise DataError(f"{path}: no TensorBoard event files and no {trainer_state.STATE_FILE} below this directory")
            refs += found
        elif tensorboard_events.is_event_file(path.name):
            refs += [r for r in tensorboard_events.find_runs(path.parent) if Path(r.origin) == path.parent][:1]
        elif path.name.lower().endswith(".json"):
            refs.append(trainer_state.state_file_ref(path))
        elif path.name.lower().endswith(wandb_logs.EXPORT_SUFFIXES):
            refs += wandb_logs.export_refs(path)
        else:
            refs.append(megatron.file_ref(path))
    origins: dict[str, str] = {}
    for ref in refs:
        if ref.name in origins:
            raise DataError(
                f"two runs are named {ref.name!r}: in {origins[ref.name]} and in {ref.origin}; "
                "give their common parent directory as the source so the names differ"
            )
        origins[ref.name] = ref.origin
    return refs


def ingest(sources, mapping: Mapping | str | Path) -> IngestResult:
    """Read training logs into a validated runs table.

    Parameters
    ----------
    sources : sequence of path or str
        Directories, files and ``wandb://entity/project[/run_id]`` URLs.
    mapping : Mapping or path
        The mapping (:func:`~bayes_scaling.io.mapping.read_mapping`) or its TOML file.

    Returns
    -------
    IngestResult

    Raises
    ------
    DataError
        Unreadable or empty logs, an unknown tag (the message lists the tags there), a
        family mixing loss units, runs left with no rows, or a table that fails the
        runs-table validation.
    SpecError
        An invalid mapping, a mapping key that matches no run, runs without a family,
        parameter count, loss tag or tokens rule.
    """
    if not isinstance(mapping, Mapping):
        mapping = read_mapping(mapping)
    refs = discover(sources)
    if not refs:
        raise DataError("no runs found in the sources")
    settings = mapping.resolve([ref.name for ref in refs])
    _check_units(settings)
    frames, reports, empty = [], [], []
    for ref in refs:
        if ref.name not in settings:
            continue
        run = settings[ref.name]
        log = ref.load(frozenset(t for t in (run.loss_tag, run.tokens.tag) if t))
        frame, report = _run_rows(log, run, mapping.cleaning)
        if not len(frame):
            empty.append(ref.name)
        frames.append(frame)
        reports.append(report)
    if empty:
        raise DataError(f"no usable loss rows left for runs {empty} (see the cleaning rules: non-finite, spikes, no tokens)")
    table = load_runs(pd.concat(frames, ignore_index=True))
    excluded = tuple(name for name in (ref.name for ref in refs) if name not in settings)
    return IngestResult(table, pd.DataFrame(reports), excluded)


def _check_units(settings: dict[str, RunSettings]) -> None:
    units: dict[str, dict[str, list[str]]] = {}
    for name, run in settings.items():
        units.setdefault(run.family, {}).setdefault(run.loss_unit, []).append(name)
    for family, by_unit in units.items():
        if len(by_unit) > 1:
            described = "; ".join(f"{unit}: {names[:3]}{' ...' if len(names) > 3 else ''}" for unit, names in by_unit.items())
            raise DataError(
                f"family {family!r} mixes loss units ({described}); the runs of one family must log one loss "
                "(its level E is shared): fix the unit or split the family"
            )


def later_segment_wins(step: np.ndarray) -> tuple[np.ndarray, int]:
    """Mask of the values kept by the restart rule, and the number of restarts.

    A value is kept when every value logged after it has a larger step; a restart is a
    step that does not exceed the step logged just before it.
    """
    step = np.asarray(step)
    if not len(step):
        return np.ones(0, dtype=bool), 0
    later_min = np.minimum.accumulate(step[::-1])[::-1]
    keep = step < np.append(later_min[1:], np.iinfo(np.int64).max)
    return keep, int(np.sum(step[1:] <= step[:-1]))


def spike_mask(loss: np.ndarray, cleaning: Cleaning) -> np.ndarray:
    """Values above ``spike_factor`` x the median of the ``spike_window`` values before them."""
    if not cleaning.drop_spikes:
        return np.zeros(len(loss), dtype=bool)
    series = pd.Series(loss)
    before = series.shift(1).rolling(cleaning.spike_window, min_periods=1).median()
    return (series > cleaning.spike_factor * before).to_numpy()


def to_nats(values: np.ndarray, unit: str) -> np.ndarray:
    """Loss per token in nats from nats, bits or a perplexity."""
    if unit == "bits":
        return values * np.log(2.0)
    if unit == "perplexity":
        return np.log(values)
    return values


def _run_rows(log: RunLog, run: RunSettings, cleaning: Cleaning) -> tuple[pd.DataFrame, dict]:
    curve = log.curve(run.loss_tag)
    keep, restarts = later_segment_wins(curve.step)
    step, value, source = curve.step[keep], curve.value[keep], curve.source[keep]
    counts = {"logged": len(curve), "restarts": restarts, "superseded": int((~keep).sum())}

    finite = np.isfinite(value)
    counts["non_finite"] = int((~finite).sum())
    step, value, source = step[finite], value[finite], source[finite]
    if run.loss_unit == "perplexity" and (value < 1).any():
        raise DataError(
            f"{log.sources[0]}: run {log.name!r}: {run.loss_tag!r} has values below 1 ({value.min():.4g}), "
            "impossible for a perplexity: is the unit right?"
        )
    loss = to_nats(value, run.loss_unit)

    spikes = spike_mask(loss, cleaning)
    counts["spikes"] = int(spikes.sum())
    step, loss, source = step[~spikes], loss[~spikes], source[~spikes]

    tokens = _tokens_at(log, run, step)
    has_tokens = np.isfinite(tokens) & (tokens > 0)
    counts["no_tokens"] = int((~has_tokens).sum())
    step, loss, source, tokens = step[has_tokens], loss[has_tokens], source[has_tokens], tokens[has_tokens]

    frame = pd.DataFrame(
        {
            "family": run.family,
            "model": log.name,
            "num_params": run.num_params,
            "tokens": tokens,
            "loss": loss,
            "step": step,
            "source": pd.Categorical.from_codes(source, categories=list(log.sources)) if len(log.sources) > 1 else log.sources[0],
            "tag": run.loss_tag,
        }
    )
    if "total_flos" in log.attrs and "global_step" in log.attrs:  # spread evenly over the steps
        frame["flops"] = step * (log.attrs["total_flos"] / log.attrs["global_step"])
    report = {
        "run": log.name,
        "family": run.family,
        "format": log.format,
        "num_params": run.num_params,
        "params_from": run.params_from,
        "loss_tag": run.loss_tag,
        "unit": run.loss_unit,
        "tokens_from": run.tokens.describe(),
        "rows": len(frame),
        "tokens_min": float(tokens.min()) if len(tokens) else np.nan,
        "tokens_max": float(tokens.max()) if len(tokens) else np.nan,
        "last_step": int(step.max()) if len(step) else np.nan,
        "max_steps": log.attrs.get("max_steps", np.nan),
        **counts,
        "truncated_records": log.attrs.get("truncated_records", 0),
    }
    return frame, report


def _tokens_at(log: RunLog, run: RunSettings, step: np.ndarray) -> np.ndarray:
    rule = run.tokens
    if rule.tag is None:
        return step * rule.per_step
    if rule.tag not in log.curves and rule.tag in log.attrs and log.attrs.get("global_step"):
        # a run-level total only (a Trainer state without per-entry counts): tokens per step assumed constant
        return step * (log.attrs[rule.tag] * rule.tag_scale / log.attrs["global_step"])
    curve = log.curve(rule.tag)
    keep, _ = later_segment_wins(curve.step)
    tag_step, tag_value = curve.step[keep], curve.value[keep] * rule.tag_scale
    finite = np.isfinite(tag_value)
    if not finite.any():
        return np.full(len(step), np.nan)
    return np.interp(step, tag_step[finite], tag_value[finite], left=np.nan, right=np.nan)
