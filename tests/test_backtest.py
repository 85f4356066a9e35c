"""Back-test protocol, point fits, scoring, runner, CLI and plots (issue 3).

NUTS budget: the Bayesian tests share one compiled cell sampler (same shape bucket and
prior kind); the coverage study over several families is marked slow.
"""

import dataclasses
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bayes_scaling import backtest as bt  # noqa: E402
from bayes_scaling.backtest import estimators  # noqa: E402
from bayes_scaling.cellfit import (  # noqa: E402
    CellPosterior,
    CellPrior,
    fit_cell,
    independent_prior,
    random_effects,
)
from bayes_scaling.data import loss_rise  # noqa: E402
from bayes_scaling.distributed import ParquetSink  # noqa: E402
from bayes_scaling.errors import ConvergenceWarning, DataError, ExtrapolationWarning  # noqa: E402
from bayes_scaling.backtest.estimators import Estimator, FittedCell  # noqa: E402
from bayes_scaling.laws import centre, chinchilla_log_loss  # noqa: E402
from bayes_scaling.pointfit import fit_classic, fit_classic_huber, raw_loss  # noqa: E402

# --------------------------------------------------------------------------- tiny table


def _run(family, model, n, tokens, loss):
    return pd.DataFrame({"family": family, "model": model, "num_params": float(n), "tokens": tokens, "loss": loss})


@pytest.fixture
def tiny():
    """Family 'a': sizes 1e8 (runs a1, a2), 2e8 (run b1), 4e8 (targets t1; t2 diverges).
    Family 'z': only 2 sizes."""
    t_small = np.array([5e9, 1e10, 2e10, 4e10])
    rows = [
        _run("a", "a1", 1e8, t_small, [3.0, 2.9, 2.8, 2.7]),
        _run("a", "a2", 1e8, np.array([1e10, 3e10]), [2.95, 2.75]),
        _run("a", "b1", 2e8, np.array([2e9, 1e10, 6e10]), [2.9, 2.7, 2.5]),
        _run("a", "t1", 4e8, np.array([1e10, 5e10, 7e10, 8e10, 1e11]), [2.6, 2.4, 2.35, 2.33, 2.3]),
        _run("a", "t2", 4e8, np.array([1e10, 5e10, 7e10, 8e10, 1e11]), [2.6, 2.4, 2.3, 2.5, 2.9]),
        _run("z", "z1", 1e8, np.array([1e10, 2e10]), [3.0, 2.9]),
        _run("z", "z2", 2e8, np.array([1e10, 2e10]), [2.9, 2.8]),
    ]
    return pd.concat(rows, ignore_index=True)


def _cell(proto, cut, k, p):
    (cell,) = [c for c in proto.cells if c.min_tokens == cut and c.k == k and c.fraction == p]
    return cell


def test_protocol_selects_cells_by_hand(tiny):
    proto = bt.protocol_cells(tiny, fractions=[0.5, 1.0], min_tokens=[1e10, 0.0], max_checkpoints=None)
    assert proto.families == ("a",)
    assert list(proto.skipped_families["family"]) == ["z"]
    # t2 rises over its last 30% (tokens >= 7e10: 2.3, 2.5, 2.9) -> excluded and listed
    assert list(proto.diverged_targets["target"]) == ["t2"]
    # k = 1, 2 only (two smaller sizes), 2 fractions, 2 cuts
    assert sorted({(c.k, c.fraction, c.min_tokens) for c in proto.cells}) == sorted(
        (k, p, c) for k in (1, 2) for p in (0.5, 1.0) for c in (1e10, 0.0)
    )
    cell = _cell(proto, 1e10, 1, 1.0)
    (target,) = cell.targets
    assert target.model == "t1"
    np.testing.assert_array_equal(target.tokens, [7e10, 8e10, 1e11])  # >= 0.7 x 1e11
    np.testing.assert_array_equal(target.loss, [2.35, 2.33, 2.3])
    # k = 1, cut 1e10: a1 without its 5e9 point, and a2
    assert sorted(cell.train_tokens) == sorted([1e10, 2e10, 4e10, 1e10, 3e10])
    assert set(cell.train_num_params) == {1e8}
    assert cell.train_models == ("a1", "a2")
    # fraction 0.5 of the max over the training runs (4e10): tokens <= 2e10
    assert sorted(_cell(proto, 1e10, 1, 0.5).train_tokens) == [1e10, 1e10, 2e10]
    # cut 0 keeps the 5e9 checkpoint; k = 2 adds b1 (2e9 only without the cut)
    assert sorted(_cell(proto, 0.0, 1, 1.0).train_tokens) == sorted([5e9, 1e10, 2e10, 4e10, 1e10, 3e10])
    k2 = _cell(proto, 0.0, 2, 1.0)
    assert len(k2.train_loss) == 9 and 2e9 in k2.train_tokens
    # targets ignore the token cut: same targets for both cuts
    np.testing.assert_array_equal(_cell(proto, 0.0, 2, 1.0).targets[0].tokens, target.tokens)


def test_protocol_lists_empty_cells_and_thins(tiny):
    proto = bt.protocol_cells(tiny, ks=[1, 5], fractions=[0.1], min_tokens=1e10, max_checkpoints=None)
    # 0.1 x 4e10 = 4e9 < 1e10: nothing left; k = 5 does not exist for family a
    assert proto.cells == ()
    assert list(proto.empty_cells[["family", "k"]].itertuples(index=False, name=None)) == [("a", 1)]
    thin = bt.protocol_cells(tiny, ks=[1], fractions=[1.0], min_tokens=0.0, max_checkpoints=2)
    assert len(thin.cells[0].train_loss) == 4  # a1 thinned to 2, a2 has 2


def test_protocol_rejects_bad_arguments(tiny):
    with pytest.raises(DataError, match="fractions"):
        bt.protocol_cells(tiny, fractions=[1.5])
    with pytest.raises(DataError, match="families not in"):
        bt.protocol_cells(tiny, families=["nope"])
    with pytest.raises(DataError, match="unknown estimators"):
        bt.build_cells(bt.protocol_cells(tiny), ["oracle"])


def test_diverged_rule():
    assert loss_rise([2.0, 1.99, 1.98])[0] is False
    assert loss_rise([2.0, 2.1, 2.3])[0] is True
    assert loss_rise([2.0, 3.0])[0] is False  # too few points to call


# --------------------------------------------------------------------------- point fits

TRUE_RAW = (6.0, 7.0, 0.5, 0.34, 0.28)


def _grid(noise=0.003, seed=0):
    rng = np.random.default_rng(seed)
    n = np.repeat([5e7, 1e8, 2e8, 4e8], 25)
    d = np.tile(np.geomspace(1e9, 1e11, 25), 4)
    y = raw_loss(n, d, *TRUE_RAW) * np.exp(rng.normal(0, noise, n.size))
    return n, d, y


@pytest.mark.parametrize("fitter", [fit_classic, fit_classic_huber])
def test_point_fits_recover_planted_truth(fitter):
    n, d, y = _grid()
    pf = fitter(n, d, y)
    assert pf.ok
    truth = raw_loss(3e9, 2e11, *TRUE_RAW)
    assert abs(pf.predict(3e9, 2e11)[0] / truth - 1) < 0.03
    # in-sample fit is tight
    assert np.mean(np.abs(pf.predict(n, d) / y - 1)) < 0.01


def test_classic_interval_from_covariance():
    n, d, y = _grid()
    pf = fit_classic(n, d, y)
    lo, hi = pf.interval([3e9], [2e11], level=0.9, seed=1)
    point = pf.predict(3e9, 2e11)
    assert lo[0] < point[0] < hi[0]
    assert fit_classic_huber(n, d, y).draws([3e9], [2e11]) is None
    # too few points: curve_fit cannot fit 5 parameters to 3 points sensibly -> no usable interval
    few = fit_classic(n[:3], d[:3], y[:3])
    assert not few.ok or np.isnan(few.interval([3e9], [2e11])[0][0])


# --------------------------------------------------------------------------- scoring


def test_score_target_and_crps():
    y = np.array([2.0, 2.0])
    s = bt.score_target(y, np.array([2.2, 1.8]), None)
    assert s["are"] == pytest.approx(0.1)
    assert np.isnan(s["cov_90"])
    rng = np.random.default_rng(0)
    draws = rng.normal(2.0, 0.1, size=(20000, 2))
    s = bt.score_target(y, np.array([2.0, 2.0]), draws)
    assert s["cov_90"] == 1.0 and s["width_90"] == pytest.approx(2 * 1.645 * 0.1 / 2.0, rel=0.05)
    # CRPS of N(0, s) at its mean is s (sqrt(2) - 1) / sqrt(pi)
    assert s["crps_rel"] == pytest.approx(0.1 * (np.sqrt(2) - 1) / np.sqrt(np.pi) / 2.0, rel=0.05)


def _rows(family, est, are, status="ok", k=1):
    return {
        "min_tokens": 1e10, "family": family, "k": k, "fraction": 1.0, "estimator": est,
        "target": "t", "are": are, "status": status, "cov_90": 0.9, "cov_50": 0.5,
    }


def test_aggregate_median_cap_wild_failed():
    res = pd.DataFrame(
        [
            _rows("a", "classic", 0.01),
            _rows("b", "classic", 5.0),  # wild
            _rows("c", "classic", np.nan, status="failed"),
            _rows("a", "bayes_hierarchical", 0.02),
            _rows("b", "bayes_hierarchical", 0.03),
            _rows("c", "bayes_hierarchical", 0.04),
        ]
    )
    agg = bt.aggregate(res, ("estimator",)).set_index("estimator")
    assert agg.loc["classic", "are_median"] == 5.0
    assert agg.loc["classic", "are_capped_mean"] == pytest.approx((0.01 + 1 + 1) / 3)
    assert agg.loc["classic", "n_wild"] == 1 and agg.loc["classic", "n_failed"] == 1
    assert agg.loc["bayes_hierarchical", "are_median"] == pytest.approx(0.03)
    text = bt.summary_markdown(res)
    assert "Token cut 1e+10" in text and "bayes_hierarchical" in text


def test_bars_compare_with_the_better_point_fit():
    # k = 1: hier 0.05 vs best 0.1 (classic) -> 0.5 x, met (bar 0.6 x); k = 2: 0.07 vs 0.1 -> 0.7 x,
    # missed; k = 3: hier 0.09 beats classic (0.2) but not huber (0.08): missed; k = 4: met
    rows = []
    for k, classic, huber, hier in ((1, 0.1, 0.3, 0.05), (2, 0.1, 0.1, 0.07), (3, 0.2, 0.08, 0.09), (4, 0.1, 0.1, 0.1)):
        for family in ("a", "b"):
            rows += [_rows(family, "classic", classic, k=k), _rows(family, "classic_huber", huber, k=k), _rows(family, "bayes_hierarchical", hier, k=k)]
    met = bt.bars(pd.DataFrame(rows)).set_index("k")["met"]
    assert met.to_dict() == {1: "yes", 2: "no: median, capped_mean", 3: "no: median, capped_mean", 4: "yes"}


def test_pooled_coverage_averages_family_cells_over_k():
    rows = [_rows(f, "bayes_hierarchical", 0.1, k=k) | {"cov_90": c} for f, k, c in (("a", 1, 1.0), ("a", 2, 0.0), ("b", 1, 1.0), ("b", 2, 1.0))]
    rows += [_rows("b", "bayes_hierarchical", 0.1, k=2) | {"target": "t2", "cov_90": 0.0}]  # b, k = 2: mean of two targets
    cov, n = bt.pooled_coverage(pd.DataFrame(rows))
    assert n == 4 and cov == pytest.approx((1 + 0 + 1 + 0.5) / 4)


def test_cluster_bootstrap_moves_siblings_together():
    # two groups: g1 holds three families scoring 1, g2 one family scoring 0; resampling groups
    # gives a mean of 0, 0.75 or 1 only (resampling families would give quarters too)
    scores = pd.DataFrame({"family": ["a", "b", "c", "d"], "x": [1.0, 1.0, 1.0, 0.0]})
    groups = {"a": "g1", "b": "g1", "c": "g1", "d": "g2"}
    seen = set()
    low, high = bt.cluster_bootstrap(scores, groups, "x", lambda v: seen.add(v.mean()) or v.mean(), n_boot=400, seed=1)
    assert seen == {0.0, 0.75, 1.0}
    assert (low, high) == (0.0, 1.0)
    # one group per family: an ordinary bootstrap, whose interval narrows with more families
    many = pd.DataFrame({"family": [f"f{i}" for i in range(400)], "x": np.tile([0.0, 1.0], 200)})
    low, high = bt.cluster_bootstrap(many, {}, "x", n_boot=400, seed=1)
    assert 0.4 < low < 0.5 < high < 0.6  # sd of the mean 0.025


def test_chance_range_of_a_calibrated_interval():
    # Binomial(16, 0.9) by hand: P(X <= 11) = 0.017 < 0.025 <= P(X <= 12) = 0.068, and
    # P(X <= 15) = 1 - 0.9^16 = 0.81 < 0.975: 12 to 16 families of 16 covered
    assert bt.chance_range(16) == pytest.approx((12 / 16, 1.0))
    low, high = bt.chance_range(1000)  # sd of the share 0.0095: about 0.9 -+ 0.019
    assert 0.88 < low < 0.885 and 0.915 < high < 0.92
    assert np.isnan(bt.chance_range(0)[0])


def test_coverage_by_mixing_splits_cells_on_rhat():
    # cell a (two targets, r-hat 1.01): coverage 0.5; cells b (1.3, covered) and c (r-hat
    # unknown: one chain) each on their own line
    rows = [
        _rows("a", "bayes_hierarchical", 0.02) | {"target": "t1", "cov_90": 1.0, "width_90": 0.2, "max_rhat": 1.01},
        _rows("a", "bayes_hierarchical", 0.04) | {"target": "t2", "cov_90": 0.0, "width_90": 0.4, "max_rhat": 1.01},
        _rows("b", "bayes_hierarchical", 0.10) | {"cov_90": 1.0, "width_90": 0.9, "max_rhat": 1.3},
        _rows("c", "bayes_hierarchical", 0.05) | {"cov_90": 1.0, "width_90": 0.5, "max_rhat": np.nan},
    ]
    split = bt.coverage_by_mixing(pd.DataFrame(rows)).set_index("mixed")
    assert split.loc["yes", ["cells", "cov_90", "width_90", "are_median"]].tolist() == pytest.approx([1, 0.5, 0.3, 0.03])
    assert split.loc["no", ["cells", "cov_90", "width_90"]].tolist() == pytest.approx([1, 1.0, 0.9])
    assert split.loc["unknown (one chain)", "cells"] == 1


def test_run_cells_streams_rows_any_order(tiny):
    proto = bt.protocol_cells(tiny, fractions=[1.0], min_tokens=0.0)
    cells = bt.build_cells(proto, ["classic", "classic_huber"])

    class Reversed:
        def map_unordered(self, fn, items):
            for item in reversed(list(items)):
                yield item, fn(item)

    seen = []
    a = bt.run_cells(cells, seed=3, sink=seen.append)
    b = bt.run_cells(cells, seed=3, executor=Reversed())
    assert len(seen) == len(cells) and sum(len(r) for r in seen) == len(a)
    key = list(bt.ROW_KEY_COLUMNS)
    pd.testing.assert_frame_equal(
        a.sort_values(key).reset_index(drop=True)[key + ["are", "seed"]],
        b.sort_values(key).reset_index(drop=True)[key + ["are", "seed"]],
    )
    assert set(a["status"]) <= {"ok", "failed", "nonfinite"}


def test_failed_cells_keep_every_column(tiny, tmp_path):
    # a failed cell's rows carry every score column (NaN), so stored cells read back as one
    # table whatever finished first
    cells = bt.build_cells(bt.protocol_cells(tiny, ks=[1], fractions=[1.0], max_checkpoints=None), ["classic"])
    broken = dataclasses.replace(cells[0], estimator="not_an_estimator")
    ok = bt.evaluate_cell(cells[0], seed=0)
    failed = bt.evaluate_cell(broken, seed=0)
    assert failed[0]["status"] == "failed" and np.isnan(failed[0]["are"]) and np.isnan(failed[0]["cov_90"])
    assert list(failed[0]) == list(ok[0])
    sink = ParquetSink(tmp_path / "cells")
    sink(failed)
    sink(ok)
    written = ParquetSink(tmp_path / "cells").read()
    assert sorted(written.columns) == sorted(ok[0]) and len(written) == 2
    assert sorted(written["status"]) == ["failed", "ok"] and written["are"].max() == pytest.approx(ok[0]["are"])


class _LastLoss(Estimator):
    """Predicts every target checkpoint at the last training loss, draws spread 10% around it."""

    name = "last_loss"
    bayesian = True  # so that bayes_ks applies to it

    def prior(self, data, populations):
        return ("prior of", data.k)

    def fit(self, data, prior, settings, seed, posterior=None):
        last = float(data.train_loss[np.argmax(data.train_tokens)])

        def predict(target, s):
            point = np.full(len(target.tokens), last)
            return point, point * np.linspace(0.9, 1.1, 101)[:, None]

        return FittedCell(predict, message=f"{prior} settings {settings['draws']}", max_rhat=1.0)


def test_a_new_estimator_is_one_class_and_one_entry(tiny, monkeypatch):
    # the back-test dispatches through the interface: an estimator it has never heard of
    # gets its cells, prior, settings and scores without any change to the back-test
    monkeypatch.setitem(estimators.REGISTRY, "last_loss", _LastLoss())
    proto = bt.protocol_cells(tiny, ks=[1, 2], fractions=[1.0], min_tokens=0.0, max_checkpoints=None)
    cells = bt.build_cells(proto, ["classic", "last_loss"], bayes_ks=[2], bayes_settings={"draws": 7})
    assert sorted((c.estimator, c.data.k) for c in cells) == [("classic", 1), ("classic", 2), ("last_loss", 2)]
    (cell,) = [c for c in cells if c.estimator == "last_loss"]
    assert cell.prior == ("prior of", 2)
    (row,) = bt.evaluate_cell(cell, seed=0)
    # k = 2: a1, a2 (1e8) and b1 (2e8); b1 trained longest (6e10), last loss 2.5; t1's late
    # window (tokens >= 7e10) is 2.35, 2.33, 2.3
    y = np.array([2.35, 2.33, 2.3])
    assert row["status"] == "ok" and row["message"] == "('prior of', 2) settings 7" and row["max_rhat"] == 1.0
    assert row["are"] == pytest.approx(np.mean(np.abs(y - 2.5) / y), rel=1e-12)
    assert row["cov_90"] == pytest.approx(1.0)  # 2.5 x [0.9, 1.1] holds every target point


def test_estimators_refuse_what_they_cannot_use(tiny):
    data = bt.protocol_cells(tiny, ks=[1], fractions=[1.0], min_tokens=0.0, max_checkpoints=None).cells[0]
    hier = estimators.REGISTRY["bayes_hierarchical"]
    with pytest.raises(DataError, match="no population prior for family 'a'"):
        hier.prior(data, None)
    with pytest.raises(DataError, match="no population prior for family 'a' at min_tokens=0"):
        hier.prior(data, {1e10: {"a": object()}})
    with pytest.raises(ValueError, match="posterior sampled elsewhere"):
        hier.fit(data, object(), bt.BAYES_SETTINGS, 0, posterior=object())
    assert [e.name for e in estimators.resolve(["classic_huber", "bayes_independent"])] == ["classic_huber", "bayes_independent"]
    assert bt.ESTIMATORS == tuple(estimators.REGISTRY) and set(bt.BAYES_ESTIMATORS) == {"bayes_independent", "bayes_hierarchical"}


# --------------------------------------------------------------------------- Bayesian cells


def _family_cell(runs, family, k):
    g = runs[runs["family"] == family]
    sizes = np.sort(g["num_params"].unique())
    train = g[g["num_params"].isin(sizes[:k])]
    target = g[g["num_params"] == sizes[-1]]
    target = target[target["tokens"] >= 0.7 * target["tokens"].max()]
    runs_idx = train["model"].map({m: i for i, m in enumerate(dict.fromkeys(train["model"]))}).to_numpy()
    x_n, x_d = centre(train["num_params"], train["tokens"])
    return x_n, x_d, runs_idx, np.log(train["loss"].to_numpy()), target


def _predict(post, target, seed=0):
    tn, td = centre(target["num_params"], target["tokens"])
    return post.predict_new_run(tn, td, seed=seed)


@pytest.mark.parametrize("nu", [4.0, math.inf], ids=["student_t", "normal_marginal"])
def test_bayes_cell_recovers_planted_truth(synthetic_runs, nu):
    runs, truth = synthetic_runs
    family = truth.index[0]
    x_n, x_d, r, y, target = _family_cell(runs, family, 3)
    prior = dataclasses.replace(independent_prior(), nu=nu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit_cell(x_n, x_d, r, y, prior, seed=0, chains=2, warmup=200, draws=200)
    draws = _predict(post, target)
    true_loss = target["true_loss"].to_numpy()
    assert np.all(np.abs(np.median(draws, axis=0) / true_loss - 1) < 0.03)
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    assert np.mean((true_loss >= lo) & (true_loss <= hi)) >= 2 / 3
    # 94% interval of the exponent on N contains the truth
    a_lo, a_hi = np.quantile(post.theta[:, 3], [0.03, 0.97])
    assert a_lo <= truth.loc[family, "alpha"] <= a_hi


def test_cell_prior_refuses_bad_shapes_and_df():
    with pytest.raises(ValueError):
        CellPrior(np.zeros(4), np.eye(5), "lognormal", (0, 1), (0, 1))
    with pytest.raises(ValueError, match="df"):
        CellPrior(np.zeros(5), np.eye(5), "lognormal", (0, 1), (0, 1), df=0.0)


def test_random_effects_equal_covariances_closed_form():
    # with one S for every family, the ML population is known in closed form:
    # mu = mean of the estimates, Sigma = their (1/F) covariance - S (when that is positive)
    rng = np.random.default_rng(1)
    means = rng.normal([0.2, -1.0, -1.5, 0.35, 0.35], [0.3, 0.3, 0.3, 0.1, 0.1], size=(30, 5))
    s = np.diag(np.full(5, 0.05**2))
    mu, sigma, mu_cov = random_effects(means, np.repeat(s[None], 30, axis=0))
    np.testing.assert_allclose(mu, means.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(means, rowvar=False, bias=True) - s, atol=1e-8)
    np.testing.assert_allclose(mu_cov, (sigma + s) / 30, rtol=1e-8)


def test_run_size_distance_below_largest_size():
    from bayes_scaling.cellfit import run_size_distance, size_anchor

    # sizes (centred log N) -1, 0, 3 in runs 0, 1, 2; a padded point (mask False) at 10 and an empty run 3
    x_n = np.array([-1.0, -1.0, 0.0, 3.0, 10.0])
    run_idx = np.array([0, 0, 1, 2, 0])
    mask = np.array([True, True, True, True, False])
    assert float(size_anchor(x_n, mask)) == pytest.approx(3.0)
    np.testing.assert_allclose(run_size_distance(x_n, run_idx, mask, 4), [4.0, 3.0, 0.0, 0.0])


def test_predict_new_run_spread_grows_with_distance():
    # a point mass in theta, no noise: log draws spread only by the run offset,
    # sd sqrt(sigma_run^2 + (sigma_size d)^2) with d = |x_n - size_anchor|
    s = 20000
    theta = np.tile([0.5, 0.0, 0.0, 0.3, 0.3], (s, 1))
    post = CellPosterior(theta, np.full(s, 0.01), np.zeros(s), math.inf, 0, 1.0, sigma_size=np.full(s, 0.02), size_anchor=-1.0)
    x_n = np.array([-1.0, 1.0, 3.0])  # d = 0, 2, 4
    draws = np.stack([post.predict_new_run(np.array([x]), np.zeros(1), seed=0, observation_noise=False)[:, 0] for x in x_n])
    sd = np.log(draws).std(axis=1)
    np.testing.assert_allclose(sd, np.hypot(0.01, 0.02 * np.array([0.0, 2.0, 4.0])), rtol=0.03)  # MC error of an sd: ~0.5%
    no_size = dataclasses.replace(post, sigma_size=None)
    assert np.log(no_size.predict_new_run(np.array([3.0]), np.zeros(1), seed=0, observation_noise=False)).std() == pytest.approx(0.01, rel=0.03)


def test_size_discrepancy_is_learned_from_runs_off_the_law():
    """Runs whose offsets grow with the distance below the largest size (sd 0.03 per unit
    log N, 3 seeds per size) against the same runs with a plain 0.003 spread: the
    posterior of sigma_size separates the two, and its 94% interval covers the scale of the
    offsets actually drawn (0.03 x the rms of their 18 standard normals: 0.73 here)."""
    rng = np.random.default_rng(3)
    truth = np.array([0.55, 0.25, 0.05, 0.34, 0.28])
    sizes = np.log(np.geomspace(5e7, 5e9, 6) / 1e9)
    x_n = np.repeat(sizes, 3 * 8)
    x_d = np.tile(np.log(np.geomspace(1e10, 2e11, 8) / 1e11), 18)
    run = np.repeat(np.arange(18), 8)
    anchor = sizes[-1]
    law = np.asarray(chinchilla_log_loss(x_n, x_d, *truth)) + rng.normal(0, 0.002, len(run))
    run_sd = np.hypot(0.003, 0.03 * (anchor - np.repeat(sizes, 3)))
    prior = dataclasses.replace(independent_prior(), size_scale=(0.05, 0.0))
    medians = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, sd in (("bent", run_sd), ("straight", np.full(18, 0.003))):
            z = rng.normal(0, 1, 18)
            y = law + z[run] * sd[run]
            post = fit_cell(x_n, x_d, run, y, prior, seed=0, chains=2, warmup=300, draws=300)
            lo, hi = np.quantile(post.sigma_size, [0.03, 0.97])
            medians[label] = np.median(post.sigma_size)
            if label == "bent":
                assert lo <= 0.03 * np.sqrt(np.mean(z**2)) <= hi, (lo, hi)
            assert post.size_anchor == pytest.approx(anchor)
    assert medians["bent"] > 3 * medians["straight"], medians


@pytest.mark.slow
def test_bayes_coverage_near_nominal_on_synthetic():
    """Coverage of the 50% / 90% predictive intervals over 8 synthetic families (k = 2)."""
    from bayes_scaling.datasets import synthetic

    runs, truth = synthetic(n_families=8, seed=11)
    prior = independent_prior()
    cov50, cov90 = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, family in enumerate(truth.index):
            x_n, x_d, r, y, target = _family_cell(runs, family, 2)
            post = fit_cell(x_n, x_d, r, y, prior, seed=i, chains=2, warmup=200, draws=200)
            draws = _predict(post, target, seed=i)
            obs = target["loss"].to_numpy()
            for level, out in ((0.5, cov50), (0.9, cov90)):
                lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
                out.append(np.mean((obs >= lo) & (obs <= hi)))
    assert 0.75 <= np.mean(cov90) <= 1.0
    assert 0.25 <= np.mean(cov50) <= 0.85


# --------------------------------------------------------------------------- CLI and plots


def test_cli_backtest_point_fits(tmp_path, synthetic_runs):
    from bayes_scaling.cli import main

    runs, _ = synthetic_runs
    path = tmp_path / "runs.csv"
    runs.drop(columns=["true_loss"]).to_csv(path, index=False)
    out = tmp_path / "out"
    code = main(
        ["backtest", str(path), "--out", str(out), "--estimators", "classic", "classic_huber", "--k", "1", "2",
         "--fractions", "0.5", "1.0", "--no-progress"]
    )
    assert code == 0
    res = pd.read_csv(out / "backtest.csv")
    assert set(res["estimator"]) == {"classic", "classic_huber"} and set(res["k"]) == {1, 2}
    assert "ARE by estimator x k" in (out / "backtest.md").read_text()
    assert main(["backtest", str(path), "--out", str(out), "--estimators", "oracle"]) == 2


def test_cli_backtest_sampler_settings(tmp_path, monkeypatch, capsys):
    # cells take the library's sampler defaults, population members the build defaults;
    # a population with no draws is refused with exit code 2, naming the flag
    from bayes_scaling import backtest as bt
    from bayes_scaling.cellfit import SAMPLER_DEFAULTS
    from bayes_scaling.cli import main
    from bayes_scaling.population import BUILD_DEFAULTS

    seen = {}

    def fake_backtest(runs, **kwargs):
        seen.update(kwargs)
        raise DataError("stop here")

    monkeypatch.setattr(bt, "backtest", fake_backtest)
    path = tmp_path / "runs.csv"
    path.write_text("family,model,num_params,tokens,loss\n")
    assert main(["backtest", str(path), "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert seen["bayes_settings"] == {**{k: SAMPLER_DEFAULTS[k] for k in ("chains", "warmup", "draws", "retry_thinning")}, "tempering": False}
    assert seen["population_settings"] == {k: BUILD_DEFAULTS[k] for k in ("warmup", "draws", "size_scale")}
    assert seen["population"] is None
    args = ["backtest", str(path), "--out", str(tmp_path / "b"), "--no-progress", "--population-warmup", "50", "--population-draws", "60"]
    assert main([*args, "--population", "public"]) == 2
    assert seen["population_settings"] == {"warmup": 50, "draws": 60, "size_scale": BUILD_DEFAULTS["size_scale"]} and seen["population"] == "public"
    capsys.readouterr()
    assert main(["backtest", str(path), "--out", str(tmp_path / "c"), "--population-draws", "0"]) == 2
    assert "--population-draws must be >= 1" in capsys.readouterr().err
    assert main(["backtest", str(path), "--out", str(tmp_path / "d"), "--population-size-scale", "0"]) == 2
    assert "--population-size-scale must be > 0" in capsys.readouterr().err


def test_plots_return_axes():
    import matplotlib.pyplot as plt

    from bayes_scaling.plots import plot_are_vs_k, plot_calibration, plot_fan

    rows = []
    for est in ("classic", "bayes_hierarchical"):
        for k in (1, 2):
            for fam in ("a", "b"):
                r = _rows(fam, est, 0.05 / k, k=k)
                r.update({f"cov_{int(round(100 * lv))}": lv for lv in bt.LEVELS})
                rows.append(r)
    res = pd.DataFrame(rows)
    assert plot_are_vs_k(res) is not None
    _, ax = plt.subplots()
    assert plot_calibration(res, ax=ax) is ax
    fan = {
        "family": "a",
        "k": 1,
        "train": pd.DataFrame({"tokens": [1e9, 1e10], "loss": [3.0, 2.8]}),
        "targets": pd.DataFrame({"tokens": [5e10, 1e11], "loss": [2.5, 2.4]}),
        "bands": pd.DataFrame(
            {"estimator": "classic", "tokens": [1e9, 1e11], "median": [3.0, 2.4], "q05": [2.9, 2.3], "q25": [2.95, 2.35],
             "q75": [3.05, 2.45], "q95": [3.1, 2.5]}
        ),
    }
    assert plot_fan(fan) is not None
    plt.close("all")


def test_classic_fit_has_the_papers_evaluation_budget(shared_runs_path):
    """overtrain-rpj at k = 3 (7 final losses, 1e10 cut): scipy's default budget of
    evaluations stops both solvers; with max_nfev = 10000 (the paper's maxfev) the fit succeeds."""
    proto = bt.protocol_cells(shared_runs_path, ks=[3], fractions=[1.0], min_tokens=[1e10], families=["overtrain-rpj"])
    (cell,) = proto.cells
    pf = fit_classic(cell.train_num_params, cell.train_tokens, cell.train_loss)
    assert pf.ok, pf.message
    assert np.all(np.isfinite(pf.params))


def test_a_cell_is_silent_on_the_warnings_its_rows_record(monkeypatch):
    # worker processes do not share the CLI's warning filters: a cell once printed an
    # ExtrapolationWarning per prediction there; its rows already carry r-hat and divergences
    def noisy(cell, seed, posterior):
        warnings.warn("far", ExtrapolationWarning)
        warnings.warn("unmixed", ConvergenceWarning)
        return [{"cell": cell}]

    monkeypatch.setattr(bt.runner, "_evaluate_cell", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bt.evaluate_cell("c") == [{"cell": "c"}]
    monkeypatch.setattr(bt.runner, "_evaluate_cell", lambda *a: warnings.warn("other", RuntimeWarning))
    with pytest.warns(RuntimeWarning, match="other"):  # anything else still reaches the caller
        bt.evaluate_cell("c")
