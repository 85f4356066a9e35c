"""Predictions of the three kinds from the shared small fit."""

import numpy as np
import pytest

from bayes_scaling.errors import DataError, FitError
from bayes_scaling.predict import family_draws, predict_loss, summarize


def test_shapes_and_summary(small_fit):
    pred = predict_loss(small_fit, "synth-01", [1e9, 1e10], [1e11, 2e11], kind="family")
    assert pred.dims == ("chain", "draw", "point")
    assert pred.sizes["point"] == 2
    table = summarize(pred)
    assert list(table[["q05", "q25", "median", "q75", "q95"]].iloc[0].diff().dropna() >= 0) == [True] * 4
    assert (table["family"] == "synth-01").all()
    # bigger model, more tokens: lower loss
    assert table["median"].iloc[1] < table["median"].iloc[0]


def test_new_run_wider_than_family_and_new_family_widest(small_fit):
    args = ("synth-02", 3e9, 2e11)
    width = {}
    for kind in ("family", "new_run", "new_family"):
        t = summarize(predict_loss(small_fit, *args, kind=kind, seed=1))
        width[kind] = float(t["q95"].iloc[0] - t["q05"].iloc[0])
    assert width["family"] < width["new_run"] < width["new_family"]


def test_prediction_matches_truth(small_fit, synthetic_runs):
    runs, _ = synthetic_runs
    last = runs.sort_values("tokens").groupby("model").tail(1).iloc[0]
    t = summarize(predict_loss(small_fit, last["family"], last["num_params"], last["tokens"], kind="family"))
    assert t["q05"].iloc[0] * 0.99 <= last["true_loss"] <= t["q95"].iloc[0] * 1.01


def test_same_seed_same_prediction_and_fit_not_mutated(small_fit):
    before = small_fit.idata.posterior["theta"].values.copy()
    a = predict_loss(small_fit, "synth-00", 1e9, 1e11, kind="new_run", observation_noise=True, seed=5)
    b = predict_loss(small_fit, "synth-00", 1e9, 1e11, kind="new_run", observation_noise=True, seed=5)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(before, small_fit.idata.posterior["theta"].values)


def test_family_draws_variables(small_fit):
    draws = family_draws(small_fit, "synth-03", kind="new_run")
    assert {"log_e", "log_a", "log_b", "alpha", "beta", "run_offset", "sigma_obs"} <= set(draws.data_vars)
    assert float(abs(draws["run_offset"]).mean()) > 0


def test_errors(small_fit):
    with pytest.raises(FitError, match="not in this fit"):
        predict_loss(small_fit, "nope", 1e9, 1e11)
    with pytest.raises(FitError, match="kind"):
        predict_loss(small_fit, "synth-00", 1e9, 1e11, kind="sideways")
    with pytest.raises(DataError, match="tokens"):
        predict_loss(small_fit, "synth-00", 1e9, -5)
