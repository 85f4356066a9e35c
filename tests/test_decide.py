"""Decisions from posterior draws: maths on synthetic parameter draws (no sampler)."""

import numpy as np
import pytest
import xarray as xr
from scipy import optimize

from bayes_scaling import decide
from bayes_scaling.errors import DataError, DecisionWarning, FitError
from bayes_scaling.laws import REFERENCE_PARAMS, REFERENCE_TOKENS

# Chinchilla (Hoffmann et al. 2022) coefficients in the centred parametrisation.
TRUTH = {"log_e": np.log(1.69), "log_a": -1.04, "log_b": -1.07, "alpha": 0.34, "beta": 0.28}


def fake_draws(seed=0, chains=2, draws=400, sd=0.05, offset_sd=0.0, shift=None, **truth):
    """Per-draw parameters scattered around ``truth`` (sd in log units; exponents get 0.3 sd)."""
    rng = np.random.default_rng(seed)
    centre = {**TRUTH, **truth}
    shape = (chains, draws)
    vals = {}
    for name, value in centre.items():
        scale = sd * (0.3 if name in ("alpha", "beta") else 1.0)
        vals[name] = value + scale * rng.normal(size=shape)
    vals["run_offset"] = offset_sd * rng.normal(size=shape)
    if shift is not None:  # multiply every term of L by exp(shift): L -> L * exp(shift)
        for name in ("log_e", "log_a", "log_b"):
            vals[name] = vals[name] + shift
    return xr.Dataset(
        {k: (("chain", "draw"), v) for k, v in vals.items()},
        coords={"chain": np.arange(chains), "draw": np.arange(draws)},
    )


def brute_force_optimum(params, flops, flops_fn):
    """N minimising the loss for one draw by scipy bounded search on log N."""

    def obj(log_n):
        n = np.exp(log_n)
        d = optimize.brentq(lambda log_d: np.log(flops_fn(n, np.exp(log_d))) - np.log(flops), -20, 80)
        d = np.exp(d)
        x_n, x_d = np.log(n / REFERENCE_PARAMS), np.log(d / REFERENCE_TOKENS)
        return np.log(
            np.exp(params["log_e"]) + np.exp(params["log_a"] - params["alpha"] * x_n) + np.exp(params["log_b"] - params["beta"] * x_d)
        )

    res = optimize.minimize_scalar(obj, bounds=(np.log(1e3), np.log(1e15)), method="bounded", options={"xatol": 1e-10})
    return np.exp(res.x)


@pytest.fixture(scope="module")
def draws():
    return fake_draws()


def test_closed_form_equals_numerical_optimum(draws):
    budgets = [1e19, 5.76e23, 1e26]
    closed = decide.compute_optimal(draws, budgets)
    numeric = decide.compute_optimal(draws, budgets, flops_fn=decide.six_nd)
    np.testing.assert_allclose(closed.draws["num_params"], numeric.draws["num_params"], rtol=1e-5)
    np.testing.assert_allclose(closed.draws["loss"], numeric.draws["loss"], rtol=1e-9)
    np.testing.assert_allclose(closed.draws["tokens"] * closed.draws["num_params"] * 6, np.broadcast_to(budgets, (2, 400, 3)), rtol=1e-9)
    for chain, draw in [(0, 0), (1, 17), (0, 399)]:
        params = {k: float(draws[k][chain, draw]) for k in TRUTH}
        n_star = brute_force_optimum(params, 5.76e23, decide.six_nd)
        assert closed.draws["num_params"].isel(chain=chain, draw=draw, budget=1) == pytest.approx(n_star, rel=1e-4)


def test_draws_without_an_interior_optimum_sit_at_the_search_edge():
    # alpha <= 0 (loss grows with N): no closed-form optimum (log of a negative number gave
    # NaN, which the summary quantiles then skipped without a word); such a draw takes the
    # smallest N of the search range, with a warning, and the other draws keep the closed form
    draws = fake_draws(draws=5)
    draws["alpha"][0, 0] = -0.05
    draws["beta"][1, 2] = 0.0
    with pytest.warns(DecisionWarning, match="2 of 10 draws have alpha or beta <= 0"):
        got = decide.compute_optimal(draws, [1e21, 1e23])
    assert np.isfinite(got.draws["num_params"]).all() and np.isfinite(got.draws["loss"]).all()
    low, _ = decide._log_n_bracket(1e21, None)
    assert got.draws["num_params"][0, 0, 0] == pytest.approx(np.exp(low), rel=0.05)
    assert got.draws["num_params"][1, 2, 0] > got.draws["num_params"][1, 1, 0]  # beta = 0: more N, not more D
    fine = fake_draws(draws=5)
    closed = decide.compute_optimal(fine, [1e21, 1e23])
    np.testing.assert_allclose(got.draws["num_params"][0, 1:], closed.draws["num_params"][0, 1:], rtol=1e-12)


def test_custom_flops_function_matches_rescaled_closed_form(draws):
    # FLOPs = 6ND * 1.5 (e.g. attention overhead): same optimum as 6ND at C / 1.5.
    custom = decide.compute_optimal(draws, 1e22, flops_fn=lambda n, d: 9.0 * n * d)
    closed = decide.compute_optimal(draws, 1e22 / 1.5)
    np.testing.assert_allclose(custom.draws["num_params"], closed.draws["num_params"], rtol=1e-5)
    params = {k: float(draws[k][0, 3]) for k in TRUTH}
    nonlinear = lambda n, d: 6.0 * n * d + 1e3 * d  # noqa: E731  (embedding-like extra cost per token)
    got = decide.compute_optimal(draws.isel(draw=[3], chain=[0]), 1e21, flops_fn=nonlinear)
    assert got.draws["num_params"].item() == pytest.approx(brute_force_optimum(params, 1e21, nonlinear), rel=1e-4)


def test_run_offset_scales_loss_not_allocation():
    base = fake_draws(offset_sd=0.0)
    noisy = fake_draws(offset_sd=0.03)
    a, b = decide.compute_optimal(base, 1e22), decide.compute_optimal(noisy, 1e22)
    np.testing.assert_allclose(a.draws["num_params"], b.draws["num_params"])
    np.testing.assert_allclose(b.draws["loss"].isel(budget=0) / a.draws["loss"].isel(budget=0), np.exp(noisy["run_offset"]))


def test_reference_points_from_attrs(draws):
    # the same law centred at N_ref = 1e8, D_ref = 1e10 (attrs of family_draws) gives the same answers
    moved = draws.copy()
    moved["log_a"] = draws["log_a"] + draws["alpha"] * np.log(10.0)
    moved["log_b"] = draws["log_b"] + draws["beta"] * np.log(10.0)
    moved.attrs.update(reference_params=1e8, reference_tokens=1e10)
    a, b = decide.compute_optimal(draws, [1e20, 1e24]), decide.compute_optimal(moved, [1e20, 1e24])
    np.testing.assert_allclose(a.draws["num_params"], b.draws["num_params"], rtol=1e-9)
    np.testing.assert_allclose(decide.loss(draws, 3e9, 1e11), decide.loss(moved, 3e9, 1e11), rtol=1e-12)


def test_isoflop_choices(draws):
    iso = decide.isoflop(draws, 5.76e23, quantile=0.9)
    assert set(iso.choices["rule"]) == {"expected_loss", "quantile_0.9", "plug_in", "median_of_optima"}
    assert iso.loss.dims == ("chain", "draw", "num_params")
    assert {"median", "q05", "q95", "mean"} <= set(iso.table.columns)
    choice = iso.choices.set_index("rule")
    # the expected-loss choice has the lowest mean loss; the quantile choice the lowest q95... up to optimiser tolerance
    assert choice.loc["expected_loss", "mean"] <= choice["mean"].min() + 1e-9
    assert choice.loc["quantile_0.9", "q95"] <= choice["q95"].min() + 1e-3
    median_params = {k: float(draws[k].median()) for k in TRUTH}
    plug = brute_force_optimum(median_params, 5.76e23, decide.six_nd)
    assert choice.loc["plug_in", "num_params"] == pytest.approx(plug, rel=1e-4)
    np.testing.assert_allclose(choice["tokens"] * choice["num_params"] * 6, 5.76e23, rtol=1e-6)


def test_planned_run_probability(draws):
    run = decide.planned_run(draws, [7e9, 7e10], 1.4e12, target_loss=2.0)
    assert run.loss.dims == ("chain", "draw", "point")
    expected = (run.loss <= 2.0).mean(("chain", "draw")).values
    np.testing.assert_allclose(run.table["p_below_target"], expected)
    assert run.table["p_below_target"].is_monotonic_increasing  # a bigger model on the same tokens is better
    assert (run.table["q05"] < run.table["median"]).all() and (run.table["median"] < run.table["q95"]).all()


def test_budget_for_target_is_the_smallest_budget(draws):
    res = decide.budget_for_target(draws, target_loss=2.0, prob=0.8)
    p_at = (decide.compute_optimal(draws, res.flops).draws["loss"] <= 2.0).mean().item()
    p_below = (decide.compute_optimal(draws, res.flops * 0.98).draws["loss"] <= 2.0).mean().item()
    assert p_at >= 0.8 > p_below
    assert float(res.required_flops.quantile(0.8)) == pytest.approx(res.flops, rel=0.05)
    general = decide.budget_for_target(draws, target_loss=2.0, prob=0.8, flops_fn=decide.six_nd)
    assert general.flops == pytest.approx(res.flops, rel=1e-3)


def test_p_a_better_plus_p_b_better_is_one(draws):
    other = fake_draws(seed=3, log_e=TRUTH["log_e"] + 0.01)
    for kwargs in ({"num_params": [1e8, 1e9, 1e10], "tokens": [2e9, 2e10, 2e11]}, {"flops": [1e19, 1e22]}):
        ab = decide.compare(draws, other, **kwargs)
        ba = decide.compare(other, draws, **kwargs)
        np.testing.assert_allclose(ab.table["p_a_better"] + ab.table["p_b_better"], 1.0)
        np.testing.assert_allclose(ab.table["p_a_better"] + ba.table["p_a_better"], 1.0)
    same = decide.compare(draws, draws, num_params=1e9, tokens=2e10)
    assert same.table["p_a_better"].item() == 0.5  # ties count half


@pytest.mark.parametrize("sd", [0.01, 0.003])
def test_truly_better_family_is_detected(sd):
    # A's loss is 5% lower at every (N, D); posterior sd shrinks as runs accumulate
    a = fake_draws(seed=1, sd=sd)
    b = fake_draws(seed=2, sd=sd, shift=np.log(1.05))
    res = decide.compare(a, b, num_params=[1e8, 1e9, 7e9], tokens=[2e9, 2e10, 1.4e11])
    assert (res.table["p_a_better"] > 0.95).all()
    np.testing.assert_allclose(res.table["rel_diff_median"], 1 / 1.05 - 1, atol=0.02)


def test_equal_families_stay_near_half():
    a, b = fake_draws(seed=1), fake_draws(seed=2)  # same truth, independent posteriors (two fits)
    res = decide.compare(a, b, num_params=[1e8, 1e9, 7e9], tokens=[2e9, 2e10, 1.4e11])
    assert np.all(np.abs(res.table["p_a_better"] - 0.5) < 0.1)
    assert abs(res.table["rel_diff_median"]).max() < 0.01


def test_joint_draws_keep_correlation():
    # B = A * 1.01 draw by draw (one hierarchical fit): paired draws give certainty, shuffled ones would not
    a = fake_draws(seed=1, sd=0.1)
    b = a.copy()
    for name in ("log_e", "log_a", "log_b"):
        b[name] = a[name] + np.log(1.01)
    res = decide.compare(a, b, num_params=1e9, tokens=2e10)
    assert res.joint and res.table["p_a_better"].item() == 1.0
    # draw sets of different sizes (two fits) are subsampled to a common size
    res2 = decide.compare(a, fake_draws(seed=5, draws=150), num_params=1e9, tokens=2e10)
    assert not res2.joint and res2.draws.sizes["draw"] == 300


def test_flip_scale_matches_truth():
    # A: lower irreducible loss, larger N term at small N -> B better small, A better large
    a = fake_draws(sd=0.0, chains=1, draws=4, log_e=np.log(1.60), alpha=0.40)
    b = fake_draws(sd=0.0, chains=1, draws=4)
    flops = np.geomspace(1e17, 1e27, 21)
    res = decide.compare(a, b, flops=flops)
    assert res.table["p_a_better"].iloc[0] == 0.0 and res.table["p_a_better"].iloc[-1] == 1.0
    la = lambda c: decide.compute_optimal(a.isel(draw=[0]), c).draws["loss"].item()  # noqa: E731
    lb = lambda c: decide.compute_optimal(b.isel(draw=[0]), c).draws["loss"].item()  # noqa: E731
    truth = np.exp(optimize.brentq(lambda lc: np.log(la(np.exp(lc)) / lb(np.exp(lc))), np.log(1e17), np.log(1e27)))
    flip = res.flip.iloc[0]
    assert flip["p_flip"] == 1.0
    assert flip["flip_flops_median"] == pytest.approx(truth, rel=0.3)  # linear interpolation between grid points
    assert flip["crossing_flops"] == pytest.approx(truth, rel=0.6)
    no_flip = decide.compare(a, a, flops=1e20)
    assert no_flip.flip.empty


def test_bad_arguments(draws):
    with pytest.raises(DataError, match="flops"):
        decide.compute_optimal(draws, 0.0)
    with pytest.raises(DataError, match="flops"):
        decide.isoflop(draws, -1e20)
    with pytest.raises(DataError, match="prob"):
        decide.budget_for_target(draws, 2.0, prob=1.5)
    with pytest.raises(DataError, match="target_loss"):
        decide.budget_for_target(draws, -1.0)
    with pytest.raises(FitError, match="impossible"):
        decide.budget_for_target(draws, 1.0, prob=0.5)  # below the irreducible loss 1.69
    with pytest.raises(FitError, match="lacks"):
        decide.compute_optimal(draws.drop_vars("alpha"), 1e20)
    with pytest.raises(DataError, match="either flops"):
        decide.compare(draws, draws, num_params=1e9, tokens=1e10, flops=1e20)
    with pytest.raises(DataError, match="tokens"):
        decide.planned_run(draws, 1e9, [1e10, float("nan")])


def test_plots_return_axes(draws):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayes_scaling.plots import decide as decide_plots

    other = fake_draws(seed=3, log_e=np.log(1.60), alpha=0.40)
    flops = np.geomspace(1e18, 1e25, 8)
    axes = [
        decide_plots.isoflop_bands(decide.isoflop(draws, 1e22)),
        decide_plots.frontier(decide.compute_optimal(draws, flops)),
        decide_plots.p_a_better(decide.compare(draws, other, flops=flops)),
        decide_plots.rel_diff_bands(decide.compare(draws, other, flops=flops)),
        decide_plots.required_flops(decide.budget_for_target(draws, 2.0, 0.9)),
    ]
    _, ax = plt.subplots()
    assert decide_plots.frontier(decide.compute_optimal(draws, flops), "loss", ax=ax) is ax
    assert all(isinstance(a, matplotlib.axes.Axes) for a in axes)
    plt.close("all")


# --------------------------------------------------------------------------- with a real (tiny) fit


@pytest.fixture(scope="module")
def fit_path(small_fit, tmp_path_factory):
    return small_fit.save(tmp_path_factory.mktemp("decide") / "fit.nc")


def _cli(argv):
    from bayes_scaling import cli

    if "decide" not in cli.COMMAND_MODULES:  # registered by the one-line entry in cli/__init__.py
        cli.COMMAND_MODULES.append("decide")
    return cli.main(argv)


def test_compare_families_of_one_fit(small_fit):
    from bayes_scaling.predict import family_draws

    fam_a, fam_b = small_fit.families[:2]
    a = family_draws(small_fit, fam_a, kind="family")
    b = family_draws(small_fit, fam_b, kind="family")
    with pytest.warns(DecisionWarning, match="draws have alpha or beta <= 0"):  # a few of this short fit's draws
        res = decide.compare(a, b, flops=np.geomspace(1e18, 1e24, 5))
    assert res.joint
    np.testing.assert_allclose(res.table["p_a_better"] + res.table["p_b_better"], 1.0)
    assert res.draws.sizes["chain"] == small_fit.idata.posterior.sizes["chain"]
    with pytest.raises(FitError, match="not in this fit"):
        family_draws(small_fit, "no-such-family", kind="new_run")


@pytest.mark.filterwarnings("default::bayes_scaling.errors.DecisionWarning")  # shown, not raised: checked below
def test_cli_budget_and_compare(small_fit, fit_path, tmp_path, capsys):
    fam_a, fam_b = small_fit.families[:2]
    rc = _cli(["budget", str(fit_path), "--family", fam_a, "--flops", "1e21", "--target-loss", "3.0", "--prob", "0.5",
               "--out", str(tmp_path)])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0 and "N* (params)" in out and "expected_loss" in out
    # the package's warnings reach the user as one line each, not as a source line and traceback
    assert all(line.startswith("bayes-scaling budget: warning: ") for line in captured.err.strip().splitlines())
    assert {p.name for p in tmp_path.glob("*.png")} >= {f"budget_{fam_a}_isoflop.png", f"budget_{fam_a}_frontier.png"}
    rc = _cli(["compare", str(fit_path), "--a", fam_a, "--b", fam_b, "--params", "1e9", "--tokens", "2e10",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "P(A better)" in out
    assert (tmp_path / f"compare_{fam_a}_vs_{fam_b}_p_a_better.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["budget", "FIT", "--family", "nope", "--flops", "1e21"], "not in this fit"),
        (["budget", "FIT", "--family", "FAM", "--flops", "0"], "--flops"),
        (["budget", "FIT", "--family", "FAM", "--flops=-5e20"], "--flops"),
        (["budget", "FIT", "--family", "FAM", "--flops", "1e21", "--target-loss", "1e-6"], "impossible"),
        (["compare", "FIT", "--a", "FAM", "--b", "nope", "--flops", "1e21"], "not in this fit"),
        (["compare", "FIT", "--a", "FAM", "--b", "FAM", "--flops", "1e21", "--params", "1e9"], "either --flops"),
    ],
)
@pytest.mark.filterwarnings("default::bayes_scaling.errors.DecisionWarning")  # a warning may come before the error
def test_cli_bad_arguments_exit_2(small_fit, fit_path, capsys, argv, message):
    argv = [str(fit_path) if a == "FIT" else small_fit.families[0] if a == "FAM" else a for a in argv]
    assert _cli([*argv, "--no-plots"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"bayes-scaling {argv[0]}: error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert all(line.startswith(f"bayes-scaling {argv[0]}: warning: ") for line in lines if line not in errors)


@pytest.mark.slow
def test_five_percent_better_family_detected_by_a_real_fit():
    """End to end: families simulated from one law, A with every term 5% lower, B and B2 equal."""
    import warnings

    from bayes_scaling import datasets
    from bayes_scaling.errors import ConvergenceWarning
    from bayes_scaling.inference import fit
    from bayes_scaling.predict import family_draws

    rng = np.random.default_rng(7)
    rows = []
    for family, scale in (("A", 0.95), ("B", 1.0), ("B2", 1.0)):
        for size in (1e8, 3e8, 1e9, 3e9):
            offset = datasets.SIGMA_RUN * rng.normal()
            tokens = np.geomspace(2e9, 2e11, 20)
            x_n, x_d = np.log(size / REFERENCE_PARAMS), np.log(tokens / REFERENCE_TOKENS)
            law = np.exp(TRUTH["log_e"]) + np.exp(TRUTH["log_a"] - TRUTH["alpha"] * x_n) + np.exp(TRUTH["log_b"] - TRUTH["beta"] * x_d)
            loss = scale * law * np.exp(offset + datasets.SIGMA_OBS * rng.normal(size=tokens.size))
            rows += [{"family": family, "model": f"{family}-{size:.0e}", "num_params": size, "tokens": t, "loss": v}
                     for t, v in zip(tokens, loss)]
    import pandas as pd

    runs = pd.DataFrame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(runs, population=None, chains=2, warmup=300, draws=300, seed=0)
    a, b, b2 = (family_draws(result, f, kind="family") for f in ("A", "B", "B2"))
    better = decide.compare(a, b, num_params=[3e8, 3e9], tokens=[3e10, 1e11])
    assert (better.table["p_a_better"] > 0.95).all()
    same = decide.compare(b, b2, num_params=[3e8, 3e9], tokens=[3e10, 1e11])
    assert ((same.table["p_a_better"] > 0.1) & (same.table["p_a_better"] < 0.9)).all()
