"""Scale (issue 6): batched cell fits, resumable Parquet sink, Ray executor, CLI wiring.

NUTS budget: one batched program and one looped sampler, both tiny (depth <= 5, 2 x 120
draws); the retries of the opt-in batched program are ``slow``. Ray tests start one local
Ray on 127.0.0.1 for the module (skipped without Ray) and use the point-fit estimators
only, so workers never compile a sampler.
"""

import dataclasses
import math
import sys

import arviz as az
import numpy as np
import pandas as pd
import pytest

from bayes_scaling import backtest as bt
from bayes_scaling.batched import CellProblem, _cells_bucket, fit_cells_batched
from bayes_scaling.cellfit import CellPosterior, CellPrior, family_r_hat, fit_cell, independent_prior, needs_retry
from bayes_scaling.distributed import ParquetSink, ResumeExecutor, check_run_config, frame_equal_numbers
from bayes_scaling.errors import DataError
from bayes_scaling.laws import chinchilla_log_loss

# --------------------------------------------------------------------------- batched

TRUTH = np.array([0.55, 0.25, 0.05, 0.34, 0.28])
SAMPLER = dict(chains=2, warmup=120, draws=120, target_accept=0.85, max_tree_depth=5)


def _prior(nu=4.0):
    """A prior that pins the E / A / B trade-off down, so both samplers see one mode."""
    return CellPrior(TRUTH + 0.05, np.diag([0.15, 0.3, 0.3, 0.08, 0.08]), "half_normal", (0.02, 0.0), (0.02, 0.0), nu=nu)


def _problem(seed, noise=0.02, nu=4.0):
    """5 sizes x 6 checkpoints, one run per size, planted truth, informative prior."""
    rng = np.random.default_rng(seed)
    n = np.repeat(np.geomspace(1e8, 2e9, 5), 6)
    d = np.tile(np.geomspace(1e10, 2e11, 6), 5)
    x_n, x_d = np.log(n / 1e9), np.log(d / 1e11)
    y = np.asarray(chinchilla_log_loss(x_n, x_d, *TRUTH)) + rng.normal(0, noise, len(n))
    return CellProblem(x_n, x_d, np.repeat(np.arange(5), 6), y, _prior(nu), seed=seed)


# Student-t samples the run offsets; Normal (nu = inf) integrates them out
@pytest.fixture(scope="module", params=[4.0, math.inf], ids=["student_t", "normal_marginal"])
def batched_and_looped(request):
    problems = [_problem(1, nu=request.param), _problem(2, nu=request.param)]
    batched = fit_cells_batched(problems, **SAMPLER)
    looped = [fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=p.seed, **SAMPLER) for p in problems]
    return problems, batched, looped


def test_batched_agrees_with_looped_within_mc_error(batched_and_looped):
    problems, batched, looped = batched_and_looped
    for b, l in zip(batched, looped):
        assert b.theta.shape == l.theta.shape == (SAMPLER["chains"] * SAMPLER["draws"], 5)
        # Monte Carlo error of each posterior mean from its ESS (arviz, per chain)
        se2 = [post.theta.var(0) / np.array([az.ess(post.theta.reshape(SAMPLER["chains"], -1, 5)[..., j]) for j in range(5)]) for post in (b, l)]
        z = np.abs(b.theta.mean(0) - l.theta.mean(0)) / np.sqrt(se2[0] + se2[1])
        assert np.all(z < 4.5), (b.theta.mean(0), l.theta.mean(0), z)
        assert 0.6 < np.median(b.sigma_obs) / np.median(l.sigma_obs) < 1.6
        assert b.num_steps.shape == (SAMPLER["chains"], SAMPLER["draws"])
        # chains laid out as fit_cell's: by_chain splits the draws back into the chains they came from
        assert b.chains == l.chains == SAMPLER["chains"]
        np.testing.assert_array_equal(b.by_chain(b.theta)[-1], b.theta[-SAMPLER["draws"] :])
        assert b.diverging.shape == (SAMPLER["chains"] * SAMPLER["draws"],) and b.diverging.sum() == b.divergences
        assert np.all((b.num_steps >= 1) & (b.num_steps <= 2 ** SAMPLER["max_tree_depth"] - 1))
        # both recover the planted exponents
        for post in (b, l):
            lo, hi = np.quantile(post.theta[:, 3:], [0.01, 0.99], axis=0)
            assert np.all((lo <= TRUTH[3:]) & (TRUTH[3:] <= hi))


def test_batched_is_seeded_and_predicts(batched_and_looped):
    problems, batched, _ = batched_and_looped
    again = fit_cells_batched(problems, **SAMPLER)  # same compiled program: same seeds, same numbers
    for a, b in zip(again, batched):
        np.testing.assert_array_equal(a.theta, b.theta)
    draws = batched[0].predict_new_run(np.zeros(3), np.zeros(3), seed=0)
    assert draws.shape == (SAMPLER["chains"] * SAMPLER["draws"], 3) and np.all(draws > 0)


def test_batched_fits_the_size_discrepancy():
    """A prior with a size term goes through the batched program too: sigma_size drawn,
    its largest size recorded, and the posterior close to fit_cell's."""
    import dataclasses

    problem = _problem(3)
    problem = dataclasses.replace(problem, prior=dataclasses.replace(problem.prior, size_scale=(0.02, 0.0)))
    assert problem.bucket()[0] == ("half_normal", False, True, False)
    (b,) = fit_cells_batched([problem], **SAMPLER)
    l = fit_cell(problem.x_n, problem.x_d, problem.run_idx, problem.log_loss, problem.prior, seed=problem.seed, **SAMPLER)
    for post in (b, l):
        assert post.sigma_size.shape == post.sigma_run.shape and np.all(post.sigma_size > 0)
        assert post.size_anchor == pytest.approx(problem.x_n.max())
    # the data (one run per size, noise 0.02) barely inform sigma_size: both stay near the
    # half-normal(0.02) prior, median 0.013; MC error of 240 draws allows a factor 2
    assert 0.5 < np.median(b.sigma_size) / np.median(l.sigma_size) < 2.0


def test_student_t_prior_gives_way_to_conflicting_data():
    """With the prior's exponents 5 prior sds off the planted ones, a Student-t prior (df 3,
    same scale) lets the data pull alpha back further than a normal prior does, in the
    batched program and in fit_cell alike."""
    import dataclasses

    problem = _problem(4)
    off = dataclasses.replace(problem.prior, loc=problem.prior.loc + np.array([0.0, 0.0, 0.0, 0.4, 0.4]))
    normal = dataclasses.replace(problem, prior=off)
    student = dataclasses.replace(problem, prior=dataclasses.replace(off, df=3.0))
    assert student.bucket()[0] == ("half_normal", False, False, True) and not normal.bucket()[0][3]
    (b_student,) = fit_cells_batched([student], **SAMPLER)
    # fit_cell's normal sampler for this bucket is the one the fixture above compiled
    l_normal, l_student = (fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=4, **SAMPLER) for p in (normal, student))

    def miss(post):
        return abs(np.median(post.theta[:, 3]) - TRUTH[3])

    assert miss(b_student) < 0.5 * miss(l_normal) and miss(l_student) < 0.5 * miss(l_normal)


# batched (the opt-in --executor batched, 47 s here): slow; its agreement with fit_cell stays
# in the default suite (test_batched_agrees_with_looped_within_mc_error)
@pytest.mark.parametrize("batched", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fit_cell", "batched"])
def test_an_unmixed_fit_is_sampled_again_longer_and_thinned(batched):
    """retry_thinning: a fit with r_hat above 1.01 has its chains carried on to 3x the
    iterations, every third draw kept, so its draws are exactly every third draw of the same
    chains run 3x longer (and, batched, its leapfrog steps those of the three iterations
    each draw stands for); with retry_thinning=1, or r_hat <= 1.01, the first fit stays."""
    short = dict(SAMPLER, warmup=20, draws=20)  # too short to mix: r_hat well above 1.01
    problems = [_problem(5), _problem(6)]

    def fit(draws, retry_thinning):
        settings = dict(short, draws=draws, retry_thinning=retry_thinning)
        if batched:
            return fit_cells_batched(problems, **settings)
        return [fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=p.seed, **settings) for p in problems]

    first, retried, longer = fit(20, 1), fit(20, 3), fit(60, 1)
    for f, r, g in zip(first, retried, longer):
        assert not f.retried and not g.retried
        assert r.retried == needs_retry(f, 3)
        assert r.theta.shape == f.theta.shape == (2 * 20, 5)
        if r.retried:
            np.testing.assert_allclose(r.by_chain(r.theta), g.by_chain(g.theta)[:, 2::3], rtol=1e-9)
            np.testing.assert_array_equal(r.diverging, g.by_chain(g.diverging).reshape(2, 20, 3).any(axis=2).ravel())
            if batched:
                np.testing.assert_array_equal(r.num_steps, g.num_steps.reshape(2, 20, 3).sum(axis=2))
                np.testing.assert_array_equal(r.warmup_steps, g.warmup_steps)
        else:
            np.testing.assert_array_equal(r.theta, f.theta)
        # sampler statistics: tree depth per draw (batched: not of summed steps); energy, for
        # E-BFMI, only of unthinned draws, whose differences span one transition
        assert f.tree_depth.shape == (40,) and 1 <= f.tree_depth.min() and f.tree_depth.max() <= SAMPLER["max_tree_depth"]
        if batched:
            assert f.energy is None and (r.tree_depth is None) == r.retried
        else:
            assert f.energy.shape == (40,) and np.isfinite(f.energy).all() and (r.energy is None) == r.retried
            np.testing.assert_array_equal(r.tree_depth, g.by_chain(g.tree_depth)[:, 2::3].ravel() if r.retried else f.tree_depth)
    assert any(r.retried for r in retried)  # the check above ran on at least one retried fit
    with pytest.raises(ValueError, match="retry_thinning"):
        fit(20, 0)


def test_a_fit_with_too_few_effective_draws_is_carried_on_like_an_unmixed_one():
    """needs_retry holds a fit to the verdict's checks: r_hat above 1.01, or bulk or tail ESS below
    100 per chain. Two chains that trace the same slow wave (4 periods in 1,000 draws, plus
    noise) agree (r_hat 1.002) but hold about 30 effective draws: carried on; independent
    draws are not; retry_thinning 1 or one chain never is."""
    rng = np.random.default_rng(0)
    wave = np.sin(2 * np.pi * 4 * np.arange(1000) / 1000)

    def post(theta, chains=2):
        scale = 1.0 + np.abs(rng.normal(size=len(theta)))
        return CellPosterior(theta, scale, scale.copy(), 4.0, 0, family_r_hat(chains, theta, scale, scale.copy()), chains=chains)

    slow = post(np.concatenate([np.repeat((wave + 0.3 * rng.normal(size=1000))[:, None], 5, axis=1) for _ in range(2)]))
    independent = post(rng.normal(size=(2000, 5)))
    assert slow.max_rhat < 1.01 and independent.max_rhat < 1.01
    assert needs_retry(slow, 3) and not needs_retry(independent, 3)
    assert not needs_retry(slow, 1) and not needs_retry(dataclasses.replace(slow, chains=1), 3)


@pytest.mark.slow  # 60 s; the opt-in replica exchange's path is in the default suite below
def test_replica_exchange_keeps_the_posterior():
    """The temperature-1 chains of a replica exchange sample the same posterior as plain NUTS:
    on a one-mode cell, posterior means within 0.25 posterior sds and sds within 25% (2 x 300
    draws each; swaps from the power-0.25 replica, whose sds are twice as wide, would show as
    sds up to 2x). Swaps do happen: the draws differ from a plain fit with the same seed."""
    from bayes_scaling.batched import fit_tempered

    p = _problem(3)
    settings = dict(SAMPLER, warmup=300, draws=300)
    plain = fit_cells_batched([p], **settings)[0]
    tempered, = fit_tempered([p], (1.0, 0.5, 0.25), **settings)
    assert tempered.tempered and not tempered.retried and plain.max_rhat < 1.05 and tempered.max_rhat < 1.05
    assert tempered.theta.shape == plain.theta.shape and tempered.run_offset.shape == (600, 5)
    sd = plain.theta.std(axis=0)
    assert np.all(np.abs(tempered.theta.mean(axis=0) - plain.theta.mean(axis=0)) < 0.25 * sd)
    np.testing.assert_allclose(tempered.theta.std(axis=0), sd, rtol=0.25)
    assert not np.allclose(tempered.theta, plain.theta)
    with pytest.raises(ValueError, match="tempering"):
        fit_tempered([p], (0.5, 1.0), **settings)


# batched: slow (30 s), as above
@pytest.mark.parametrize("batched", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fit_cell", "batched"])
def test_a_fit_whose_chains_sit_apart_is_retried_as_a_replica_exchange(batched):
    """With tempering, retry_thinning > 1 and r_hat above 1.05 (a fit far too short
    to mix), the retry is a replica exchange with the same chains and draws, not a carried-on
    run; its run offsets are drawn too (a user's predictions of existing runs need them).
    Without (the default) the same fit is carried on."""
    settings = dict(SAMPLER, warmup=20, draws=20)
    p = _problem(5)

    def fit(**retry):
        if batched:
            return fit_cells_batched([p], **settings, **retry)[0]
        return fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=p.seed, **settings, **retry)

    first, carried, retried = fit(retry_thinning=1, tempering=True), fit(retry_thinning=3), fit(retry_thinning=3, tempering=True)
    assert first.max_rhat > 1.05 and not first.tempered and not first.retried
    assert carried.retried and not carried.tempered
    assert retried.retried and retried.tempered
    assert retried.theta.shape == first.theta.shape == (40, 5) and retried.run_offset.shape == (40, 5)
    assert np.all(np.isfinite(retried.theta)) and np.isfinite(retried.max_rhat)


_ONE_DEVICE_PER_CHAIN = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import sys
sys.path.insert(0, {tests!r})
import jax
import numpy as np
from test_scale import SAMPLER, _problem
from bayes_scaling.cellfit import fit_cell
assert jax.local_device_count() == 2
p = _problem(5)
settings = dict(SAMPLER, warmup=20)
retried = fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=p.seed, retry_thinning=3, **dict(settings, draws=20))
longer = fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=p.seed, **dict(settings, draws=60))
assert retried.retried
np.testing.assert_allclose(retried.by_chain(retried.theta), longer.by_chain(longer.theta)[:, 2::3], rtol=1e-9)
print("exact")
"""


def test_a_retry_on_one_device_per_chain_is_exact_too():
    """With a device per chain (what the CLI sets up), fit_cell maps chains over devices, a
    second program; carrying a fit on there also gives every third draw of the longer run.
    In a fresh process, since the device count is fixed when JAX starts."""
    import subprocess
    from pathlib import Path

    script = _ONE_DEVICE_PER_CHAIN.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("exact"), done.stderr[-2000:]


def test_cells_bucket_and_bad_input():
    assert [_cells_bucket(n) for n in (1, 2, 3, 5, 8, 9, 100)] == [1, 2, 4, 8, 8, 16, 104]
    with pytest.raises(ValueError, match="differ in length"):
        CellProblem(np.zeros(3), np.zeros(2), np.zeros(3, int), np.zeros(3), independent_prior())
    with pytest.raises(ValueError, match="chains"):
        fit_cells_batched([_problem(0)], chains=0)


# --------------------------------------------------------------------------- resume without Ray


def _run(family, model, n, tokens, loss):
    return pd.DataFrame({"family": family, "model": model, "num_params": float(n), "tokens": tokens, "loss": loss})


@pytest.fixture
def table():
    """Two families with 4 sizes each: 2 families x 3 k x 2 fractions x 2 point estimators = 24 cells."""
    rows = []
    for fam, shift in (("a", 0.0), ("b", 0.1)):
        for i, n in enumerate((1e8, 2e8, 4e8, 8e8)):
            tok = np.geomspace(1e10, 1e11, 8)
            loss = 1.7 + shift + 400 * n**-0.34 + 400 * tok**-0.28
            rows.append(_run(fam, f"{fam}{i}", n, tok, loss * (1 + 0.002 * np.sin(np.arange(8) + i))))
    return pd.concat(rows, ignore_index=True)


def _cells(table):
    proto = bt.protocol_cells(table, fractions=[0.5, 1.0], max_checkpoints=None)
    return bt.build_cells(proto, ("classic", "classic_huber"))


class _Interrupted(Exception):
    pass


class _StopAfter:
    """LocalExecutor that dies after n cells (a killed run)."""

    def __init__(self, n):
        self.n, self.ran = n, []

    def map_unordered(self, fn, items):
        for item in items:
            if len(self.ran) == self.n:
                raise _Interrupted
            self.ran.append(item.key)
            yield item, fn(item)


def test_parquet_sink_resume_skips_finished_cells(tmp_path, table):
    cells = _cells(table)
    assert len(cells) == 24
    full = bt.run_cells(cells, seed=5)
    sink = ParquetSink(tmp_path / "cells")
    with pytest.raises(_Interrupted):
        bt.run_cells(cells, seed=5, executor=_StopAfter(7), sink=sink)
    assert len(sink.done_keys()) == 7  # each finished cell is on disk
    (tmp_path / "cells" / "cell-junk.parquet.tmp123").write_bytes(b"half")  # debris of a kill
    sink = ParquetSink(tmp_path / "cells")
    assert not list((tmp_path / "cells").glob("*.tmp*"))
    stored = sink.stored()
    inner = _StopAfter(10**6)
    resumed = bt.run_cells(cells, seed=5, executor=ResumeExecutor(inner, stored), sink=sink)
    assert len(inner.ran) == 24 - 7 and not set(inner.ran) & set(stored)
    assert frame_equal_numbers(resumed, full)
    assert frame_equal_numbers(sink.read(), full)


def test_run_config_mismatch_refused(tmp_path):
    check_run_config(tmp_path, {"seed": 0, "draws": 200})
    (tmp_path / "cell-x.parquet").write_bytes(b"")
    check_run_config(tmp_path, {"seed": 0, "draws": 200})
    with pytest.raises(DataError, match="draws"):
        check_run_config(tmp_path, {"seed": 0, "draws": 300})


def _cli(args):
    from bayes_scaling.cli import main

    return main(["backtest", *map(str, args)])


def test_cli_resume_and_ray_missing(tmp_path, table, monkeypatch, capsys):
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    base = [path, "--estimators", "classic", "--fractions", "0.5", "1.0", "--no-progress", "--out"]
    assert _cli([*base, tmp_path / "o1"]) == 0
    first = pd.read_csv(tmp_path / "o1" / "backtest.csv")
    files = sorted((tmp_path / "o1" / "cells").glob("cell-*.parquet"))
    assert len(files) == 12
    files[0].unlink()
    assert _cli([*base, tmp_path / "o1"]) == 0  # resumes: reruns one cell, CSV complete again
    assert frame_equal_numbers(pd.read_csv(tmp_path / "o1" / "backtest.csv"), first)
    assert _cli([*base, tmp_path / "o1", "--seed", "1"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert _cli([*base, tmp_path / "o1", "--seed", "1", "--restart"]) == 0
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert _cli([*base, tmp_path / "o2", "--executor", "ray"]) == 2
    assert "pip install 'bayes-scaling[ray]'" in capsys.readouterr().err
    assert _cli([*base, tmp_path / "o3", "--address", "1.2.3.4:6379"]) == 2


def test_process_executor_same_numbers_as_local(table, tmp_path):
    from bayes_scaling.distributed import ProcessExecutor, make_executor

    cells = _cells(table)
    local = bt.run_cells(cells, seed=5)
    with ProcessExecutor(workers=2) as ex:
        order = []
        pooled = bt.run_cells(cells, seed=5, executor=ex, progress=lambda c: order.append(c.key))
    assert sorted(order) == sorted(c.key for c in cells)
    assert frame_equal_numbers(pooled, local)
    with pytest.raises(DataError, match="workers"):
        ProcessExecutor(workers=0)
    with pytest.raises(DataError, match="--address"):
        make_executor("process", address="1.2.3.4:6379")
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    base = [path, "--estimators", "classic", "--fractions", "0.5", "1.0", "--no-progress", "--out"]
    assert _cli([*base, tmp_path / "proc", "--executor", "process", "--num-cpus", "2"]) == 0
    assert _cli([*base, tmp_path / "loc"]) == 0
    assert frame_equal_numbers(pd.read_csv(tmp_path / "proc" / "backtest.csv"), pd.read_csv(tmp_path / "loc" / "backtest.csv"))


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray")
    from bayes_scaling.distributed import RayExecutor

    ex = RayExecutor(num_cpus=2)
    yield ex
    ex.close()


def test_ray_same_numbers_as_local(ray_executor, table, tmp_path):
    cells = _cells(table)
    local = bt.run_cells(cells, seed=5)
    sink = ParquetSink(tmp_path / "cells")
    order = []
    remote = bt.run_cells(cells, seed=5, executor=ray_executor, sink=sink, progress=lambda c: order.append(c.key))
    assert sorted(order) == sorted(c.key for c in cells)
    assert frame_equal_numbers(remote, local)
    assert frame_equal_numbers(sink.read(), local)
    # resume through Ray: nothing left to run
    resumed = bt.run_cells(cells, seed=5, executor=ResumeExecutor(ray_executor, sink.stored()))
    assert frame_equal_numbers(resumed, local)


def test_cli_ray_executor(ray_executor, table, tmp_path):
    """The CLI joins the Ray already running in this process (the fixture's local one)."""
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    base = [path, "--estimators", "classic", "--fractions", "1.0", "--no-progress", "--out"]
    assert _cli([*base, tmp_path / "ray", "--executor", "ray"]) == 0
    assert _cli([*base, tmp_path / "loc"]) == 0
    a = pd.read_csv(tmp_path / "ray" / "backtest.csv")
    b = pd.read_csv(tmp_path / "loc" / "backtest.csv")
    assert frame_equal_numbers(a, b)


# --------------------------------------------------------------------------- batched back-test executor


class _Reversed:
    def map_unordered(self, fn, items):
        for item in reversed(list(items)):
            yield item, fn(item)


@pytest.mark.slow
def test_batched_executor_scores_bayes_cells(table):
    """Bayesian cells through BatchedExecutor: every row scored, same numbers whatever the
    inner executor's order (one tiny compilation)."""
    from bayes_scaling.distributed import BatchedExecutor

    proto = bt.protocol_cells(table, fractions=[1.0], max_checkpoints=None)
    tiny = dict(chains=1, warmup=30, draws=30, max_tree_depth=3, n_pred_draws=30)
    cells = bt.build_cells(proto, ("classic", "bayes_independent"), bayes_settings=tiny)
    a = bt.run_cells(cells, seed=2, executor=BatchedExecutor(batch_size=8))
    b = bt.run_cells(cells, seed=2, executor=BatchedExecutor(_Reversed(), batch_size=8))
    assert len(a) == len(cells) and set(a["estimator"]) == {"classic", "bayes_independent"}
    assert (a["status"] != "failed").all()
    assert frame_equal_numbers(a, b)


def test_population_build_through_worker_processes():
    """Member fits give the same population in worker processes as in this one, and each
    member carries a size discrepancy."""
    from bayes_scaling import population
    from bayes_scaling.datasets import synthetic
    from bayes_scaling.distributed import ProcessExecutor

    runs, truth = synthetic(n_families=3, seed=2)
    tiny = dict(chains=1, warmup=30, draws=30, max_checkpoints=6)
    local = population.build(runs, **tiny)
    with ProcessExecutor(workers=1) as ex:  # one fresh process proves it; a second doubles the compilation
        pooled = population.build(runs, executor=ex, **tiny)
    assert local.families == pooled.families == tuple(sorted(truth.index))
    np.testing.assert_array_equal(local.theta_mean, pooled.theta_mean)
    assert np.all(np.isfinite(local.log_scales[:, 2]))  # sigma_size moments of every member
