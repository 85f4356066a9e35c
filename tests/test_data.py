"""Tier 1: data validation (every DataError case) and filters."""

import re

import numpy as np
import pandas as pd
import pytest

from bayes_scaling.data import Filters, apply_filters, load_runs, prepare, rising_runs, thin_log_spaced, warn_rising_runs
from bayes_scaling.errors import DataError, DataWarning, FitError
from bayes_scaling.inference import fit


def make_runs(n_runs=3, n_ckpt=8, family="fam"):
    rows = []
    for r in range(n_runs):
        n = 1e8 * 3**r
        for t in np.geomspace(2e9, 2e11, n_ckpt):
            rows.append({"family": family, "model": f"m{r}", "num_params": n, "tokens": t, "loss": 2.0 + 100 / n**0.3 + 400 / t**0.3})
    return pd.DataFrame(rows)


def test_valid_table_loads_and_caller_frame_untouched():
    runs = make_runs()
    before = runs.copy(deep=True)
    data = prepare(runs, Filters(min_tokens=1e10))
    pd.testing.assert_frame_equal(runs, before)
    assert data.families == ("fam",)
    assert len(data.runs) == 3
    assert np.all(np.exp(data.log_loss) > 2.0)
    assert set(data.run_idx) == {0, 1, 2}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns="loss"), "missing column"),
        (lambda df: df.assign(loss=df["loss"].astype(object).where(df.index != 2, "abc")), "non-numeric"),
        (lambda df: df.assign(loss=df["loss"].where(df.index != 3, np.nan)), "NaN or infinite"),
        (lambda df: df.assign(tokens=df["tokens"].where(df.index != 3, np.inf)), "NaN or infinite"),
        (lambda df: df.assign(loss=df["loss"].where(df.index != 4, -1.0)), "'loss' has 1 rows <= 0"),
        (lambda df: df.assign(num_params=df["num_params"].where(df.index != 5, 0.0)), "'num_params' has 1 rows <= 0"),
        (lambda df: df.assign(tokens=df["tokens"].where(df.index != 6, 0.0)), "'tokens' has 1 rows <= 0"),
        (lambda df: pd.concat([df, df.iloc[[0]]]), "duplicate"),
        (lambda df: df.assign(tokens=df["tokens"] / 1e9), "billions"),
    ],
)
def test_bad_input_raises_data_error_naming_the_culprit(mutate, message):
    with pytest.raises(DataError, match=message) as info:
        load_runs(mutate(make_runs()))
    if "missing" not in message and "billions" not in message:
        assert "family=fam model=m" in str(info.value)


def test_family_emptied_by_token_cut_is_named():
    runs = pd.concat([make_runs(), make_runs(family="tiny").assign(tokens=lambda d: d["tokens"] / 100)])
    largest = runs.loc[runs["family"] == "tiny", "tokens"].max()
    # a small-scale family is told how far below the cut it stops and how to lower the cut
    with pytest.raises(DataError, match=rf"min_tokens=1e\+10.*\['tiny'\] \(largest checkpoint: {re.escape(f'{largest:.3g}')} tokens\); lower the cut .*--min-tokens"):
        prepare(runs, Filters(min_tokens=1e10))


def test_primary_filter_and_empty_family():
    runs = make_runs().assign(is_primary=False)
    with pytest.raises(DataError, match="primary_only"):
        prepare(runs)
    # string booleans as written by some CSV exporters
    ok = make_runs().assign(is_primary="True")
    assert prepare(ok).n_checkpoints > 0


def test_several_curves_per_run_rejected():
    a = make_runs().assign(metric="val_loss", eval_set="c4")
    b = make_runs().assign(metric="val_loss", eval_set="pile")
    with pytest.raises(DataError, match="several"):
        prepare(pd.concat([a, b]), Filters(primary_only=False))


def test_unknown_family_filter():
    with pytest.raises(DataError, match="not in the runs table"):
        prepare(make_runs(), Filters(families=("nope",)))


def test_thinning_keeps_ends_and_log_spacing():
    tokens = np.geomspace(1e9, 1e12, 1000)
    idx = thin_log_spaced(tokens, 20)
    assert len(idx) <= 21
    assert tokens[idx].min() == tokens.min() and tokens[idx].max() == tokens.max()
    gaps = np.diff(np.log(np.sort(tokens[idx])))
    assert gaps.max() < 3 * gaps.mean()


def test_filters_thin_each_run():
    runs = make_runs(n_ckpt=100)
    table = apply_filters(load_runs(runs), Filters(min_tokens=0, max_checkpoints=10))
    assert table.groupby("model").size().max() <= 11


def test_bad_filter_values():
    with pytest.raises(DataError):
        Filters(min_tokens=-1)
    with pytest.raises(DataError):
        Filters(max_checkpoints=0)


def test_reads_csv_gz_and_parquet(tmp_path):
    runs = make_runs()
    runs.to_csv(tmp_path / "r.csv.gz", index=False)
    runs.to_parquet(tmp_path / "r.parquet")
    assert len(load_runs(tmp_path / "r.csv.gz")) == len(runs)
    assert len(load_runs(tmp_path / "r.parquet")) == len(runs)
    with pytest.raises(DataError, match="not found"):
        load_runs(tmp_path / "missing.csv")
    (tmp_path / "r.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported"):
        load_runs(tmp_path / "r.xlsx")


def test_drop_emptied_families_instead_of_failing():
    runs = pd.concat([make_runs(), make_runs(family="tiny").assign(tokens=lambda d: d["tokens"] / 100)])
    data = prepare(runs, Filters(min_tokens=1e10, drop_emptied=True))
    assert data.families == ("fam",)
    assert "tiny" in data.dropped_families and "min_tokens" in data.dropped_families["tiny"]


def test_shared_corpus_loads_as_is(shared_runs_path):
    with pytest.raises(DataError, match="gzip-pcfg"):
        prepare(shared_runs_path)
    data = prepare(shared_runs_path, Filters(drop_emptied=True))
    assert len(data.families) >= 25
    assert data.table.groupby(["family", "model"]).size().max() <= 31
    assert (data.table["tokens"] >= 1e10).all()


def _turned(runs, model="m1", rise=0.06):
    """``runs`` with ``model``'s loss bent upward over its last 30% of tokens, by up to ``rise``."""
    runs = runs.copy()
    rows = runs["model"] == model
    top = runs.loc[rows, "tokens"].max()
    late = rows & (runs["tokens"] >= 0.7 * top)
    runs.loc[late, "loss"] *= 1 + rise * (runs.loc[late, "tokens"] - 0.7 * top) / (0.3 * top)
    return runs


def test_a_run_whose_loss_turns_up_late_is_named():
    runs = make_runs(n_ckpt=40)
    assert rising_runs(runs).empty  # falling curves
    rising = rising_runs(_turned(runs))
    assert rising["model"].tolist() == ["m1"] and 0.02 < rising["rise"].iloc[0] < 0.06
    assert rising_runs(_turned(runs, rise=0.01)).empty  # within the 2% allowance
    with pytest.warns(DataWarning, match=r"the loss of 1 run rises .*fam/m1 \+\d\.\d%"):
        warn_rising_runs(prepare(_turned(runs), Filters(min_tokens=1e10)))


@pytest.mark.parametrize("population", ["public", None], ids=["population", "joint"])
def test_both_fit_paths_warn_of_a_run_that_turned(population):
    # chains=0 is refused after the data are read, so nothing is sampled
    with pytest.warns(DataWarning, match="fam/m1"), pytest.raises(FitError, match="chains"):
        fit(_turned(make_runs(n_ckpt=40)), population=population, chains=0)
