"""Families whose runs have one checkpoint each: does the run-spread / noise ridge drive their mixing? (issue 18, item 1)

    python benchmarks/one_checkpoint_runs.py [--runs ../shared/data/runs.csv.gz] [--seeds 0 1]

With one checkpoint per run (isoFLOP sweeps, final losses of over-training grids) a run's
offset and its checkpoint's noise add up to one number, so the cell model's ``sigma_run``
and ``sigma_obs`` are identified only together: an L-shaped ridge in log scale. The joint
model sets ``sigma_run = 0`` there and gives the noise the prior of
``sqrt(noise^2 + run^2)``; the cell model (the public path and the back-test) does not.

For every family of the shared corpus whose runs all have one checkpoint at the 1e10 cut,
its back-test cells at k = 3 and 5 (population without its source group) are fitted by
:meth:`bayes_scaling.cellfit.FamilyArrays.fit` two ways, 4 chains x (1000 + 1000), the
back-test's target acceptance and tree depth:

* ``current``: the population prior as the back-test uses it;
* ``run pinned``: ``sigma_run``'s prior a log-normal at 1e-5 (log-sd 0.01), standing in
  for the joint model's 0 (the compiled model has no switch for it), and ``sigma_obs``'s the
  log-normal fitted to ``sqrt(noise^2 + run^2)`` under the population's two priors (moments
  of 200,000 seeded draws).

Per fit: max r-hat of the fit (``CellPosterior.max_rhat``), how far apart the chains' medians sit (largest over
the law's parameters, in within-chain sds), min bulk ESS of ``sigma_obs`` and of theta,
and seconds; where the chains are apart, each chain's median of theta and what it predicts. Writes ``results/one_checkpoint_runs.md``. Nothing here changes the method.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayes_scaling import backtest as bt  # noqa: E402
from bayes_scaling.cellfit import CellPrior, FamilyArrays  # noqa: E402
from bayes_scaling.data import load_runs  # noqa: E402
from bayes_scaling.laws import PARAM_NAMES, centre, chinchilla_log_loss  # noqa: E402
from bayes_scaling.outputs import atomic_write_text  # noqa: E402
from bayes_scaling.population import public  # noqa: E402
from benchmarks._chains import chain_spread, mixing_aggregations  # noqa: E402

HERE = Path(__file__).resolve().parent
SAMPLER = dict(chains=4, warmup=1000, draws=1000, target_accept=bt.BAYES_SETTINGS["target_accept"], max_tree_depth=bt.BAYES_SETTINGS["max_tree_depth"])
KS = (3, 5)
PINNED_RUN_SCALE = (float(np.log(1e-5)), 0.01)


def pinned(prior: CellPrior, seed: int = 0, n: int = 200_000) -> CellPrior:
    """``prior`` with sigma_run pinned near 0 and sigma_obs given the prior of sqrt(noise^2 + run^2)."""
    rng = np.random.default_rng(seed)
    total = np.log(np.hypot(prior.sample_scale("noise", rng, (n,)), prior.sample_scale("run", rng, (n,))))
    return dataclasses.replace(prior, run_scale=PINNED_RUN_SCALE, noise_scale=(float(total.mean()), float(total.std())))


def one_checkpoint_families(table: pd.DataFrame) -> list[str]:
    """Families whose every run has exactly one checkpoint at the 1e10 cut."""
    kept = table[table["tokens"] >= 1e10]
    per_run = kept.groupby(["family", "model"]).size()
    return sorted(f for f, counts in per_run.groupby(level="family") if counts.max() == 1)


def _ess(values: np.ndarray) -> float:
    """Min bulk ESS over the last axis of ``values`` (chains, draws[, k])."""
    values = values if values.ndim == 3 else values[..., None]
    return float(min(az.ess(values[..., j], method="bulk") for j in range(values.shape[-1])))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE.parent.parent / "shared" / "data" / "runs.csv.gz"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "one_checkpoint_runs.md")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    table = bt.primary_table(load_runs(args.runs))
    families = one_checkpoint_families(table)
    population = public()
    rows, modes = [], []
    for family in families:
        prior = population.without(groups=[population.group_of(family)]).prior()
        treatments = {"current": prior, "run pinned": pinned(prior)}
        for cell in bt.protocol_cells(table, ks=list(KS), fractions=[1.0], min_tokens=[1e10], families=[family]).cells:
            x_n, x_d = centre(cell.train_num_params, cell.train_tokens)
            arrays = FamilyArrays.from_arrays(x_n, x_d, cell.train_run, np.log(cell.train_loss), cell.train_models)
            for name, p in treatments.items():
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        post = arrays.fit(p, seed=seed, **SAMPLER)
                    rows.append({
                        "family": family, "k": cell.k, "runs": int(arrays.run_idx.max()) + 1, "treatment": name, "seed": seed,
                        "max_rhat": round(post.max_rhat, 3), "chain_spread": round(chain_spread(post.by_chain(post.theta)), 2),
                        "min_ess_theta": round(_ess(post.by_chain(post.theta))), "ess_sigma_obs": round(_ess(post.by_chain(post.sigma_obs))),
                        "divergences": post.divergences, "seconds": round(time.perf_counter() - t0, 1),
                    })
                    print(rows[-1], flush=True)
                    if rows[-1]["chain_spread"] > 2:
                        theta, target = post.by_chain(post.theta), cell.targets[0]
                        t_n, t_d = centre(np.full(1, target.num_params), target.tokens[-1:])
                        for chain in range(len(theta)):
                            median = np.median(theta[chain], axis=0)
                            predicted = float(np.exp(chinchilla_log_loss(t_n, t_d, *median))[0])
                            modes.append({"family": family, "k": cell.k, "treatment": name, "seed": seed, "chain": chain,
                                          **{n: round(float(v), 3) for n, v in zip(PARAM_NAMES, median)},
                                          "target final loss: predicted": round(predicted, 3), "observed": round(float(target.loss[-1]), 3)})
    res = pd.DataFrame(rows)
    summary = res.groupby("treatment", sort=False).agg(
        fits=("family", "size"),
        **mixing_aggregations(),
        median_ess_sigma_obs=("ess_sigma_obs", "median"),
        median_min_ess_theta=("min_ess_theta", "median"),
        divergences=("divergences", "sum"),
        seconds=("seconds", "sum"),
    )
    text = "\n".join([
        "# One checkpoint per run: the run-spread / noise ridge (issue 18, item 1)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, no accelerator; {time.strftime('%Y-%m-%d')}",
        f"- families (every run one checkpoint at the 1e10 cut): {', '.join(families)}; k = {', '.join(map(str, KS))}; seeds {args.seeds}",
        f"- sampler: {SAMPLER}; population: shipped public without the family's source group",
        f"- run pinned: sigma_run ~ log-normal({PINNED_RUN_SCALE[0]:.2f}, {PINNED_RUN_SCALE[1]}), sigma_obs ~ the log-normal of sqrt(noise^2 + run^2)",
        "- chains apart: the chains' medians of some law parameter span more than 2 within-chain sds",
        f"- wall time: {(time.perf_counter() - started) / 60:.1f} min",
        "",
        "## Summary",
        "",
        bt.md_table(summary.reset_index()),
        "",
        "## Per fit",
        "",
        bt.md_table(res),
        "",
        "## Where the chains sat, in fits whose chains are apart",
        "",
        "Each chain's median of the law's parameters (centred units, `bayes_scaling.laws`) and the target's final loss "
        "that median predicts (no run offset or noise).",
        "",
        bt.md_table(pd.DataFrame(modes)) if modes else "(none)",
        "",
    ])
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
