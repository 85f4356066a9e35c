"""The synthetic corpus: deterministic, valid, and generated from the stated truth."""

import numpy as np
import pandas as pd

from bayes_scaling import datasets
from bayes_scaling.data import load_runs
from bayes_scaling.demo import split_largest
from bayes_scaling.laws import PARAM_NAMES, centre, chinchilla_log_loss


def test_same_seed_same_corpus_and_valid_schema():
    a, truth_a = datasets.synthetic(n_families=3, seed=4)
    b, truth_b = datasets.synthetic(n_families=3, seed=4)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(truth_a, truth_b)
    assert not a.equals(datasets.synthetic(n_families=3, seed=5)[0])
    assert len(load_runs(a)) == len(a)


def test_true_loss_follows_the_law_up_to_run_offset():
    runs, truth = datasets.synthetic(n_families=2, seed=1)
    for (family, model), run in runs.groupby(["family", "model"]):
        x_n, x_d = centre(run["num_params"], run["tokens"])
        law = np.asarray(chinchilla_log_loss(x_n, x_d, *(truth.loc[family, p] for p in PARAM_NAMES)))
        offset = np.log(run["true_loss"].to_numpy()) - law
        np.testing.assert_allclose(offset, offset[0], atol=1e-5)  # one offset per run (JAX float32)
        assert abs(offset[0]) < 5 * truth.attrs["sigma_run"]


def test_population_is_centred_on_besiroglu():
    # raw Chinchilla fit of Besiroglu et al. 2024 in centred units
    mean = datasets.POPULATION_MEAN
    assert abs(np.exp(mean["log_e"]) - 1.82) < 1e-12
    _, truth = datasets.synthetic(n_families=200, seed=0)
    for p in PARAM_NAMES:
        assert abs(truth[p].mean() - mean[p]) < 4 * datasets.POPULATION_SD[p] / np.sqrt(200) + 0.01


def test_split_largest_holds_out_each_familys_biggest_run():
    runs, _ = datasets.synthetic(n_families=3, seed=2)
    train, held = split_largest(runs)
    assert len(train) + len(held) == len(runs)
    for family, group in runs.groupby("family"):
        assert set(held[held["family"] == family]["num_params"]) == {group["num_params"].max()}
        assert train[train["family"] == family]["num_params"].max() < group["num_params"].max()
