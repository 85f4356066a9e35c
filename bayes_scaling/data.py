"""Runs tables in, validated arrays out.

A runs table is tidy: one row per (family, model, checkpoint) with the columns of
``../shared/data/runs.csv.gz``. This module checks it at the boundary (every problem is a
:class:`~bayes_scaling.errors.DataError` naming the column and the first offending rows),
applies the paper's data filters and turns what is left into the integer indices and
centred covariates the model needs. The caller's DataFrame is never mutated.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, DataWarning
from .laws import REFERENCE_PARAMS, REFERENCE_TOKENS, centre

REQUIRED_COLUMNS = ("family", "model", "num_params", "tokens", "loss")
NUMERIC_COLUMNS = ("num_params", "tokens", "loss")
OPTIONAL_COLUMNS = ("seed", "flops", "metric", "eval_set", "is_primary", "arch")

#: Every value of ``tokens`` below this looks like "billions of tokens", not tokens.
TOKENS_IN_BILLIONS_THRESHOLD = 1e6


def default_data_dir() -> Path:
    """Directory of the shared corpus: ``$BAYES_SCALING_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("BAYES_SCALING_DATA", Path("..") / "shared" / "data"))


@dataclass(frozen=True)
class Filters:
    """Data filters, with the defaults of "A Hitchhiker's Guide to Scaling Law Estimation".

    Parameters
    ----------
    min_tokens : float
        Drop checkpoints that have seen fewer tokens (early loss is noisy). Small-scale
        families (synthetic languages, tiny isoFLOP sweeps) need a lower cut.
    max_checkpoints : int or None
        Thin each run to at most this many log-spaced checkpoints (dense logs of one run are
        strongly correlated and would otherwise dominate the likelihood). None keeps all.
    primary_only : bool
        Keep only rows with ``is_primary`` (one metric per family) when that column exists.
    families : tuple of str or None
        Keep only these families. None keeps all.
    drop_emptied : bool
        Drop a family that a filter leaves empty (recorded in
        ``RunsData.dropped_families``) instead of raising DataError.
    """

    min_tokens: float = 1e10
    max_checkpoints: int | None = 30
    primary_only: bool = True
    families: tuple[str, ...] | None = None
    drop_emptied: bool = False

    def __post_init__(self):
        if not np.isfinite(self.min_tokens) or self.min_tokens < 0:
            raise DataError(f"min_tokens must be a finite number >= 0, got {self.min_tokens!r}")
        if self.max_checkpoints is not None and (int(self.max_checkpoints) != self.max_checkpoints or self.max_checkpoints < 1):
            raise DataError(f"max_checkpoints must be a positive integer or None, got {self.max_checkpoints!r}")
        if self.families is not None:
            object.__setattr__(self, "families", tuple(self.families))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunsData:
    """A filtered runs table and the arrays the model reads.

    Attributes
    ----------
    table : DataFrame
        Filtered rows (a private copy), with integer columns ``family_idx`` and ``run_idx``.
    families : tuple of str
        Family names, in index order.
    runs : tuple of str
        Run names ``"family/model"``, in index order.
    run_family : ndarray of int
        Family index of each run.
    x_n, x_d : ndarray of float
        Centred covariates ``log(N / N_ref)`` and ``log(D / D_ref)`` per checkpoint.
    log_loss : ndarray of float
        Natural log of the loss per checkpoint.
    family_idx, run_idx : ndarray of int
        Family and run index per checkpoint.
    filters : Filters
        The filters that produced this table.
    dropped_families : dict
        Family -> the filter that emptied it (only with ``Filters(drop_emptied=True)``).
    """

    table: pd.DataFrame
    families: tuple[str, ...]
    runs: tuple[str, ...]
    run_family: np.ndarray
    x_n: np.ndarray
    x_d: np.ndarray
    log_loss: np.ndarray
    family_idx: np.ndarray
    run_idx: np.ndarray
    filters: Filters
    dropped_families: dict

    @property
    def n_checkpoints(self) -> int:
        return len(self.log_loss)

    def family_sizes(self) -> pd.DataFrame:
        """Rows, runs and distinct model sizes per family."""
        return self.table.groupby("family", sort=False).agg(
            rows=("loss", "size"), runs=("model", "nunique"), sizes=("num_params", "nunique")
        )


def _first_rows(df: pd.DataFrame, mask, limit: int = 3) -> str:
    """Describe the first offending rows as ``family=... model=...`` for error messages."""
    bad = df.loc[np.asarray(mask)]
    parts = []
    for _, row in bad.head(limit).iterrows():
        parts.append(f"family={row.get('family', '?')} model={row.get('model', '?')}")
    return "; ".join(parts)


def read_table(source) -> pd.DataFrame:
    """Read a runs table from a CSV, CSV.gz or Parquet path, or copy a DataFrame."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"runs must be a path (CSV, CSV.gz or Parquet) or a pandas DataFrame, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise DataError(f"runs file not found: {path}")
    if path.is_dir():
        raise DataError(f"runs file {path} is a directory; give a .csv, .csv.gz or .parquet file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        # a truncated .gz raises EOFError, a damaged one zlib.error; pyarrow's errors are ValueErrors
        raise DataError(f"cannot read runs file {path} (damaged or truncated?): {type(exc).__name__}: {exc}") from exc
    raise DataError(f"unsupported runs file type {path.name!r}: use .csv, .csv.gz or .parquet")


def _missing_columns_message(df: pd.DataFrame, missing: list) -> str:
    message = f"runs table is missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)}"
    if len(df.columns) == 1:
        header = str(df.columns[0])
        for sep, label in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
            if sep in header:
                return (
                    f"runs table has one column {header[:80]!r}: the delimiter looks wrong (the header is split by "
                    f"{label}); write the CSV with commas, or use a .tsv name for tab-separated files"
                )
    return message


def _numeric_column(out: pd.DataFrame, col: str) -> pd.Series:
    """The column as float, or DataError naming the dtype or the first non-numeric values."""
    kind = out[col].dtype.kind
    if kind in "iuf":
        return out[col].astype(float)
    if kind in "bcmM":  # bool, complex, timedelta, datetime: to_numeric would turn them into numbers silently
        raise DataError(f"column {col!r} has dtype {out[col].dtype}; expected plain numbers")
    values = pd.to_numeric(out[col].astype(object), errors="coerce")
    non_numeric = values.isna() & out[col].notna()
    if non_numeric.any():
        raise DataError(
            f"column {col!r} has {int(non_numeric.sum())} non-numeric values such as "
            f"{out.loc[non_numeric, col].iloc[0]!r} (first: {_first_rows(out, non_numeric)})"
        )
    return values.astype(float)


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check a runs table and return a cleaned copy with numeric dtypes.

    Raises
    ------
    DataError
        Missing column, non-numeric or non-finite value, loss/num_params/tokens <= 0,
        duplicate (family, model, tokens) within one metric, or tokens in billions.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"runs must be a pandas DataFrame here, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(_missing_columns_message(df, missing))
    if len(df) == 0:
        raise DataError("runs table has no rows")
    out = df.copy()
    for col in ("family", "model"):
        if out[col].isna().any():
            raise DataError(f"column {col!r} has {int(out[col].isna().sum())} empty values (first: {_first_rows(out, out[col].isna())})")
        out[col] = out[col].astype(str)
    for col in NUMERIC_COLUMNS:
        values = _numeric_column(out, col)
        not_finite = ~np.isfinite(values.to_numpy(dtype=float))
        if not_finite.any():
            raise DataError(f"column {col!r} has {int(not_finite.sum())} NaN or infinite values (first: {_first_rows(out, not_finite)})")
        not_positive = values.to_numpy(dtype=float) <= 0
        if not_positive.any():
            raise DataError(f"column {col!r} has {int(not_positive.sum())} rows <= 0 (first: {_first_rows(out, not_positive)})")
        out[col] = values.astype(float)
    # per family: one family in billions among families in plain counts is as wrong
    max_tokens = out.groupby("family", sort=True)["tokens"].max()
    in_billions = max_tokens[max_tokens < TOKENS_IN_BILLIONS_THRESHOLD]
    if len(in_billions):
        shown = ", ".join(f"{f} (max {t:g})" for f, t in in_billions.head(5).items())
        raise DataError(
            f"column 'tokens' is below {TOKENS_IN_BILLIONS_THRESHOLD:.0e} for every row of {len(in_billions)} "
            f"famil{'y' if len(in_billions) == 1 else 'ies'}: {shown}; it looks like billions of tokens; "
            "give tokens as a plain count"
        )
    if "is_primary" in out.columns:
        out["is_primary"] = _bool_column(out, "is_primary")
    curve = [c for c in ("metric", "eval_set") if c in out.columns]
    dup = out.duplicated(["family", "model", "tokens", *curve], keep=False)
    if dup.any():
        raise DataError(_duplicates_message(out, dup, curve))
    return out


def _duplicates_message(out: pd.DataFrame, dup, curve: list) -> str:
    """Name the first duplicated checkpoints once each, with their tokens and row numbers."""
    keys = ["family", "model", "tokens", *curve]
    groups = out[np.asarray(dup)].groupby(keys, sort=False).groups
    shown = []
    for key, rows in list(groups.items())[:3]:
        values = dict(zip(keys, key))
        where = " ".join(f"{k}={values[k]:g}" if k == "tokens" else f"{k}={values[k]}" for k in keys)
        shown.append(f"{where} at rows {', '.join(str(r) for r in list(rows)[:5])}")
    return (
        f"{int(np.sum(dup))} rows duplicate a checkpoint ({', '.join(keys)}) in {len(groups)} place(s) "
        f"(row numbers count data rows from 0): {'; '.join(shown)}; each checkpoint of a run must appear once"
    )


_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})


def _bool_column(out: pd.DataFrame, col: str) -> pd.Series:
    """The column as bool; DataError for anything but clear booleans (a typo must not
    silently count as false)."""
    if out[col].dtype.kind == "b":
        return out[col].astype(bool)
    text = out[col].map(lambda v: str(v).strip().lower() if pd.notna(v) else "")
    unclear = ~text.isin(_TRUE | _FALSE)
    if unclear.any():
        examples = sorted({repr(v) for v in out.loc[unclear, col].head(20)})[:3]
        raise DataError(
            f"column {col!r} has {int(unclear.sum())} values that are not clear booleans, such as {', '.join(examples)} "
            f"(first: {_first_rows(out, unclear)}); use true/false, yes/no or 1/0"
        )
    return text.isin(_TRUE)


def load_runs(source) -> pd.DataFrame:
    """Read and validate a runs table (path or DataFrame); returns a new DataFrame."""
    return validate(read_table(source))


def thin_log_spaced(tokens: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` checkpoints spread evenly in log tokens.

    Always keeps the first and the last checkpoint; picks, for each of ``max_points``
    log-spaced targets, the nearest checkpoint not yet taken.
    """
    order = np.argsort(tokens)
    if len(tokens) <= max_points:
        return order
    log_t = np.log(tokens[order])
    targets = np.linspace(log_t[0], log_t[-1], max_points)
    picked = np.unique(np.searchsorted(log_t, targets).clip(0, len(log_t) - 1))
    # searchsorted picks the checkpoint at or after each target; the last is always included
    return order[np.union1d(picked, [0, len(log_t) - 1])]


#: A run's late window: its checkpoints past this share of its tokens (the last 30% of
#: training; the back-test's targets).
LATE_START = 0.7
#: A late window "rises" when the mean loss of its last third exceeds that of its first third
#: by more than this (2%: well above checkpoint noise).
RISE_LIMIT = 0.02


def late_window(tokens, loss, start: float = LATE_START) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (tokens, loss) of the checkpoints with ``tokens >= start * max(tokens)``."""
    tokens = np.asarray(tokens, float)
    loss = np.asarray(loss, float)
    order = np.argsort(tokens)
    tokens, loss = tokens[order], loss[order]
    keep = tokens >= start * tokens.max()
    return tokens[keep], loss[keep]


def loss_rise(loss) -> tuple[bool, float]:
    """Whether a window's loss (in token order) rises: ``(rises, relative rise)``, the rise
    being the mean of the last third over the mean of the first, minus 1. Windows of fewer
    than 3 points never rise."""
    loss = np.asarray(loss, float)
    if len(loss) < 3:
        return False, 0.0
    third = max(1, len(loss) // 3)
    rise = float(loss[-third:].mean() / loss[:third].mean() - 1.0)
    return rise > RISE_LIMIT, rise


def rising_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Runs of a runs table whose loss rises over their late window (:func:`loss_rise`):
    columns ``family``, ``model``, ``rise``, ``n_points``."""
    rows = []
    for (family, model), run in table.groupby(["family", "model"], sort=True):
        _, loss = late_window(run["tokens"], run["loss"])
        rises, rise = loss_rise(loss)
        if rises:
            rows.append({"family": family, "model": model, "rise": rise, "n_points": len(loss)})
    return pd.DataFrame(rows, columns=["family", "model", "rise", "n_points"])


def warn_rising_runs(data: RunsData) -> None:
    """Warn (:class:`~bayes_scaling.errors.DataWarning`) about the runs a fit is about to
    read whose loss rises late in training: the law has loss fall with tokens, so a run that
    turned (repeated data, overfitting, a divergence) pulls what is extrapolated from it."""
    rising = rising_runs(data.table)
    if len(rising):
        runs = ", ".join(f"{r.family}/{r.model} {r.rise:+.1%}" for r in rising.itertuples())
        warnings.warn(
            DataWarning(
                f"the loss of {len(rising)} run{'s' if len(rising) > 1 else ''} rises over the last {1 - LATE_START:.0%} of training "
                f"(the mean of those checkpoints' last third against their first): {runs}. The law has loss fall with tokens, so a run that turned "
                "(repeated data, overfitting, a divergence) pulls the extrapolation; drop its late checkpoints or the run "
                "unless that turn is what you mean to predict"
            ),
            stacklevel=3,
        )


def apply_filters(runs: pd.DataFrame, filters: Filters = Filters()) -> pd.DataFrame:
    """Apply the data filters to a validated runs table; returns a new DataFrame.

    Families emptied by a filter are listed in ``attrs["dropped_families"]`` of the
    result when ``filters.drop_emptied`` is set.

    Raises
    ------
    DataError
        When a requested family is absent, or (unless ``drop_emptied``) a family is left
        empty, naming the filter that emptied it.
    """
    df = runs
    dropped: dict[str, str] = {}
    if filters.families is not None:
        unknown = sorted(set(filters.families) - set(df["family"]))
        if unknown:
            raise DataError(f"families not in the runs table: {unknown}")
        df = df[df["family"].isin(filters.families)]
    if filters.primary_only and "is_primary" in df.columns:
        df = _drop_emptied(df, df["is_primary"], "primary_only (no row with is_primary=True)", filters.drop_emptied, dropped)
    curve = [c for c in ("metric", "eval_set") if c in df.columns]
    if curve:
        n_curves = df.groupby(["family", "model"])[curve].nunique().max(axis=1)
        several = n_curves[n_curves > 1]
        if len(several):
            fam, model = several.index[0]
            raise DataError(
                f"{len(several)} runs have several (metric, eval_set) curves (first: family={fam} model={model}); "
                "keep one per run (set is_primary or filter the table)"
            )
    df = _drop_emptied(df, df["tokens"] >= filters.min_tokens, f"min_tokens={filters.min_tokens:g}", filters.drop_emptied, dropped, _token_cut_advice)
    if filters.max_checkpoints is not None:
        keep = []
        for _, group in df.groupby(["family", "model"], sort=False):
            idx = thin_log_spaced(group["tokens"].to_numpy(), filters.max_checkpoints)
            keep.append(group.index.to_numpy()[idx])
        df = df.loc[np.sort(np.concatenate(keep))]
    out = df.reset_index(drop=True)
    out.attrs["dropped_families"] = dropped  # family -> the filter that emptied it
    return out


def _token_cut_advice(df: pd.DataFrame, emptied: list) -> str:
    """A small-scale family: how far below the cut it stops, and how to lower the cut."""
    most = df[df["family"].isin(emptied)].groupby("family")["tokens"].max()
    return (
        f" (largest checkpoint: {', '.join(f'{most[f]:.3g}' for f in emptied)} tokens)"
        "; lower the cut (min_tokens, CLI --min-tokens) or drop the family (drop_emptied, CLI --drop-emptied)"
    )


def _drop_emptied(df: pd.DataFrame, keep_mask, filter_name: str, allowed: bool, dropped: dict, advice=None) -> pd.DataFrame:
    """Rows of ``keep_mask``; a family left without rows is dropped if ``allowed``, else
    refused, with ``advice(df, emptied)`` (default: drop the family) ending the message."""
    kept = df[np.asarray(keep_mask)]
    emptied = sorted(set(df["family"]) - set(kept["family"]))
    if emptied and not allowed:
        tail = advice(df, emptied) if advice else "; drop the family (drop_emptied, CLI --drop-emptied)"
        raise DataError(f"filter {filter_name} leaves no rows for famil{'y' if len(emptied) == 1 else 'ies'} {emptied}{tail}")
    dropped.update({family: filter_name for family in emptied})
    return kept


def prepare(
    runs,
    filters: Filters = Filters(),
    reference_params: float = REFERENCE_PARAMS,
    reference_tokens: float = REFERENCE_TOKENS,
) -> RunsData:
    """Validate, filter and index a runs table for the model.

    Parameters
    ----------
    runs : path or DataFrame
        The runs table (see module docstring for columns).
    filters : Filters
        Data filters; the defaults follow the paper.
    reference_params, reference_tokens : float
        Reference points of the centred covariates.

    Returns
    -------
    RunsData
    """
    table = apply_filters(load_runs(runs), filters)
    if len(table) == 0:
        raise DataError(f"no rows left after filtering ({filters})")
    dropped = dict(table.attrs.get("dropped_families", {}))
    families = tuple(dict.fromkeys(table["family"]))
    table["family_idx"] = table["family"].map({f: i for i, f in enumerate(families)}).astype(int)
    run_names = table["family"] + "/" + table["model"]
    run_order = (
        table.assign(run=run_names)
        .drop_duplicates("run")
        .sort_values(["family_idx", "run"], kind="stable")
    )
    runs_tuple = tuple(run_order["run"])
    table["run_idx"] = run_names.map({r: i for i, r in enumerate(runs_tuple)}).astype(int)
    x_n, x_d = centre(table["num_params"], table["tokens"], reference_params, reference_tokens)
    return RunsData(
        table=table,
        families=families,
        runs=runs_tuple,
        run_family=run_order["family_idx"].to_numpy(dtype=np.int32),
        x_n=x_n,
        x_d=x_d,
        log_loss=np.log(table["loss"].to_numpy(dtype=float)),
        family_idx=table["family_idx"].to_numpy(dtype=np.int32),
        run_idx=table["run_idx"].to_numpy(dtype=np.int32),
        filters=filters,
        dropped_families=dropped,
    )
