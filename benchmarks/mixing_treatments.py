"""Unmixed back-test cells: slow mixing or several modes? What longer warmup, more chains, stacking and mode masses do (issue 18, item 1).

    python benchmarks/mixing_treatments.py [--runs ../shared/data/runs.csv.gz] [--seed 0] [--cache DIR]

Takes the ``bayes_hierarchical`` cells of ``results/backtest.csv`` whose max r-hat exceeded
1.05 at the given seed (the public path at the 1e10 cut, fraction 1.0, population without
the family's source group) and refits each of them, with the same model, prior, data and
cell seed, in the batched program (:func:`bayes_scaling.batched.fit_cells_batched`) under:

* ``baseline``: the back-test's sampler, 2 chains x (1000 warmup + 1000 draws);
* ``long warmup``: 2 chains x (4000 + 1000): if chains only adapt or travel slowly, this
  brings r-hat down;
* ``8 chains``: 8 chains x (1000 + 1000) pooled with equal weights: if the posterior has
  several modes, more chains find them (r-hat stays high) and the pooled draws weigh the
  modes by how many chains fell in each, not by their mass;
* ``8 chains, stacked``: the same fits, chains weighted by stacking
  (:mod:`bayes_scaling.stacking`: PSIS-LOO density of each training run per chain, Yao,
  Vehtari and Gelman 2022); its r-hat is the unstacked fit's, its time includes the fits;
* ``8 chains, mode mass``: the same fits, chains weighted by the posterior mass of the
  region each explored (:mod:`bayes_scaling.modes`: importance sampling from a mixture of
  one Student-t per chain); r-hat and time as for stacking.

Per cell and treatment: max r-hat of the fit (``CellPosterior.max_rhat``), how far apart the chains' medians of the
law parameters are (the largest over the five, in units of the within-chain sd: above ~2
the chains sit in different places), and the scores of the back-test (ARE of the final loss, whether
the target's checkpoints fall inside the 90% new-run interval). Writes
``results/mixing_treatments.md`` (seed 0; ``mixing_treatments_seed<N>.md`` for another seed). Nothing here changes the method; it says what the
unmixed cells are.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayes_scaling import backtest as bt  # noqa: E402
from bayes_scaling import modes, stacking  # noqa: E402
from bayes_scaling.batched import CellProblem, fit_cells_batched  # noqa: E402
from bayes_scaling.cellfit import FamilyArrays  # noqa: E402
from bayes_scaling.data import load_runs  # noqa: E402
from bayes_scaling.laws import centre  # noqa: E402
from bayes_scaling.outputs import atomic_path, atomic_write_text  # noqa: E402
from benchmarks._chains import chain_spread, mixing_aggregations  # noqa: E402

HERE = Path(__file__).resolve().parent
TREATMENTS = {
    "baseline": dict(chains=2, warmup=1000, draws=1000),
    "long warmup": dict(chains=2, warmup=4000, draws=1000),
    "8 chains": dict(chains=8, warmup=1000, draws=1000),
}
#: Stacking (Yao, Vehtari, Gelman 2022) and mode masses re-weight the chains of this treatment's fits.
REWEIGHTED_FROM = "8 chains"
NUTS = dict(target_accept=bt.BAYES_SETTINGS["target_accept"], max_tree_depth=bt.BAYES_SETTINGS["max_tree_depth"])


def unmixed_cells(results: pd.DataFrame, seed: int, threshold: float = 1.05) -> set[tuple[str, int]]:
    """(family, k) of the bayes_hierarchical cells with max r-hat above ``threshold`` in the
    back-test run with seed ``seed`` (the ``seed`` column of benchmarks/backtest.py's CSV)."""
    rows = results[(results["estimator"] == "bayes_hierarchical") & (results["fraction"] == 1.0) & (results["min_tokens"] == 1e10)]
    rows = rows[(rows["seed"] == seed) & (rows["max_rhat"] > threshold)]
    return {(f, int(k)) for f, k in zip(rows["family"], rows["k"])}


def stacked(post, problem):
    """Chain weights by stacking (:mod:`bayes_scaling.stacking`) and how many (chain, run)
    LOO densities had Pareto k above 0.7."""
    log_lik = stacking.cell_run_log_lik(post, problem.x_n, problem.x_d, problem.run_idx, problem.log_loss, problem.weight)
    lpd, pareto_k = stacking.loo_log_densities(post.by_chain(log_lik))
    return stacking.stacking_weights(lpd), {"pareto_k_above_0_7": int((pareto_k > 0.7).sum())}


def mode_mass(post, problem):
    """Chain weights by mode mass (:mod:`bayes_scaling.modes`) and the Pareto k of their
    importance weights."""
    log_density = modes.cell_log_density(problem.x_n, problem.x_d, problem.run_idx, problem.log_loss, problem.prior, problem.weight)
    weights, k = modes.mode_mass_weights(modes.unconstrained_draws(post, problem.x_n, problem.x_d), log_density, seed=problem.seed)
    return weights, {"pareto_k": k}


REWEIGHTINGS = {"8 chains, stacked": stacked, "8 chains, mode mass": mode_mass}


def fitted(problems, sampler: dict, cache: Path | None):
    """The cells' posteriors under ``sampler`` and the seconds the fits took (read from
    ``cache`` when it holds them; written there, atomically, when it does not)."""
    if cache is not None and cache.exists():
        with open(cache, "rb") as fh:
            return pickle.load(fh)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = (fit_cells_batched(problems, **sampler, **NUTS), time.perf_counter() - started)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            pickle.dump(result, fh)
    return result


def score(post, target, seed: int) -> dict:
    tn, td = centre(np.full(len(target.tokens), target.num_params), target.tokens)
    draws = post.predict_new_run(tn, td, seed=seed)
    s = bt.score_target(target.loss, np.median(draws, axis=0), draws)
    return {"max_rhat": post.max_rhat, "chain_spread": chain_spread(post.by_chain(post.theta)), "are_%": 100 * s["are_last"], "cov_90_%": 100 * s["cov_90"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE.parent.parent / "shared" / "data" / "runs.csv.gz"))
    parser.add_argument("--results", type=Path, default=HERE / "results" / "backtest.csv")
    parser.add_argument("--seed", type=int, default=0, help="which back-test seed's unmixed cells (0, 1, 2)")
    parser.add_argument("--out", type=Path, help="default: results/mixing_treatments.md (seed 0), results/mixing_treatments_seed<N>.md")
    parser.add_argument("--cache", type=Path, help="keep each treatment's fits here (pickles) and reuse them on a rerun")
    args = parser.parse_args(argv)
    args.out = args.out or HERE / "results" / ("mixing_treatments.md" if args.seed == 0 else f"mixing_treatments_seed{args.seed}.md")

    picked = unmixed_cells(pd.read_csv(args.results), args.seed)
    table = bt.primary_table(load_runs(args.runs))
    families = sorted({f for f, _ in picked})
    protocol = bt.protocol_cells(table, ks=sorted({k for _, k in picked}), fractions=[1.0], min_tokens=[1e10], families=families)
    cells = [c for c in protocol.cells if (c.family, c.k) in picked]
    priors, _ = bt.population_priors(table, families, 1e10, population="public", seed=args.seed)
    problems = []
    for c in cells:
        x_n, x_d = centre(c.train_num_params, c.train_tokens)
        arrays = FamilyArrays.from_arrays(x_n, x_d, c.train_run, np.log(c.train_loss), c.train_models)
        seed = bt.cell_seed(bt.Cell(c, "bayes_hierarchical").key, args.seed)  # the back-test's seed of this cell
        prior = priors[c.family].prior()  # the population without the family's source group, as fit_with_population uses it
        problems.append(CellProblem(arrays.x_n, arrays.x_d, arrays.run_idx, arrays.log_loss, prior, seed=seed, weight=arrays.weight))

    # cached fits are keyed by the cells too: a new back-test picks other unmixed cells
    cells_key = hashlib.sha1(repr(sorted(picked)).encode()).hexdigest()[:10]
    rows, seconds = [], {}
    for name, sampler in TREATMENTS.items():
        posts, seconds[name] = fitted(problems, sampler, args.cache and args.cache / f"seed{args.seed}-{cells_key}-{name.replace(' ', '_')}.pkl")
        for c, p, post in zip(cells, problems, posts):
            rows.append({"family": c.family, "k": c.k, "treatment": name, **score(post, c.targets[0], p.seed)})
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
        if name != REWEIGHTED_FROM:
            continue
        for reweighted, chain_weights in REWEIGHTINGS.items():
            started = time.perf_counter()
            for c, p, post in zip(cells, problems, posts):
                weights, diagnostics = chain_weights(post, p)
                row = {"family": c.family, "k": c.k, "treatment": reweighted, **score(stacking.stack_chains(post, weights), c.targets[0], p.seed)}
                row.update(max_rhat=post.max_rhat, chain_spread=np.nan, top_weight=float(weights.max()), **diagnostics)
                rows.append(row)
            seconds[reweighted] = seconds[name] + time.perf_counter() - started
    res = pd.DataFrame(rows)
    res["max_rhat"] = [_round(v, 3) for v in res["max_rhat"]]

    summary = res.groupby("treatment", sort=False).agg(
        cells=("family", "size"),
        **mixing_aggregations(),
        median_are_pct=("are_%", "median"),
        mean_cov_90_pct=("cov_90_%", "mean"),
    )
    summary["seconds"] = [round(seconds[t]) for t in summary.index]
    wide = res.pivot_table(index=["family", "k"], columns="treatment", values=["max_rhat", "chain_spread", "are_%", "cov_90_%"], sort=False)
    wide.columns = [f"{t}: {v}" for v, t in wide.columns]
    text = "\n".join(
        [
            "# Unmixed back-test cells under longer warmup, more chains, stacking and mode masses (issue 18, item 1)",
            "",
            f"- machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, no accelerator; {time.strftime('%Y-%m-%d')}",
            f"- cells: the {len(cells)} bayes_hierarchical cells with max r-hat > 1.05 at back-test seed {args.seed} "
            f"(`{args.results.name}`), refitted with the same prior, data and cell seed in the batched program",
            f"- treatments: {'; '.join(f'{k}: {v}' for k, v in TREATMENTS.items())}; target_accept {NUTS['target_accept']}, "
            f"max tree depth {NUTS['max_tree_depth']}",
            "- chains apart: for some law parameter the chains' medians span more than 2 within-chain sds (chain_spread > 2; "
            "not defined for the stacked draws, which form one chain)",
            "",
            "## Summary",
            "",
            bt.md_table(summary.reset_index().round(2)),
            "",
            "## Per cell",
            "",
            bt.md_table(wide.reset_index().round(2)),
            "",
            "## Chain weights",
            "",
            "Largest chain weight (1/8 = equal pooling). Stacking: how many of the (chain, run) LOO densities had Pareto k > 0.7 "
            "(unreliable). Mode mass: the Pareto k of the importance weights (above 0.7: unreliable).",
            "",
            bt.md_table(weights_table(res)),
            "",
        ]
    )
    atomic_write_text(args.out, text)
    print(text)
    return 0


def weights_table(res: pd.DataFrame) -> pd.DataFrame:
    """Per cell, each re-weighting's largest chain weight and its diagnostic."""
    rows = res[res["treatment"].isin(REWEIGHTINGS)]
    wide = rows.pivot_table(index=["family", "k"], columns="treatment", values=["top_weight", "pareto_k_above_0_7", "pareto_k"], sort=False)
    wide.columns = [f"{t}: {v}" for v, t in wide.columns]
    return wide.reset_index().round(3)


def _round(v, digits):
    return round(float(v), digits) if np.isfinite(v) else v


if __name__ == "__main__":
    raise SystemExit(main())
