"""How the joint model's family parameters are sampled and what prior their spreads get (issue 18, item 5).

    python benchmarks/family_effects.py [--runs ../shared/data/runs.csv.gz] [--effects level hybrid]
        [--scale-priors lognormal gamma] [--lkj 2 8] [--draws N] [--seeds 0 1]

Refits the joint hierarchical model (``bs.fit(..., population=None)``) of every notebook
that prints a convergence verdict, with the notebook's data and sampler settings, under
each ``family_effects`` of the spec (see :func:`bayes_scaling.model.family_effects`):

* ``level``: theta in level coordinates at each family's data centre (the default);
* ``hybrid``: the same for (log_e, log_a, log_b), the exponents non-centred;

and each prior of the population spreads ``tau``:

* ``lognormal``: the spec's (shipped) log-normals;
* ``gamma``: the Gamma(2, rate) priors shipped before them, with the same mean and sd of
  log(tau) (:data:`GAMMA_SCALES`);

and each LKJ concentration of their correlation given with ``--lkj`` (default: the spec's).
``--draws N`` runs every fit at N warmup + N draws instead of its notebook's.

Per fit: divergences, max r-hat, min bulk and tail ESS, draws at the maximum tree depth,
the verdict of :func:`bayes_scaling.diagnostics.convergence_report` and the wall time.
Fits run one after another, side by side per problem and seed, on this machine (divergence
counts swing widely between seeds, so compare over seeds). Rows go to
``results/family_effects.csv`` as they come; a rerun skips the fits already there.
Writes ``results/family_effects.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import platform
import time
import warnings
from pathlib import Path

import numpyro

numpyro.set_host_device_count(4)  # one CPU device per chain, as the notebooks do; before JAX starts

import pandas as pd  # noqa: E402

import bayes_scaling as bs  # noqa: E402
from bayes_scaling import diagnostics  # noqa: E402
from bayes_scaling.backtest import md_table  # noqa: E402
from bayes_scaling.outputs import atomic_path, atomic_write_text  # noqa: E402
from bayes_scaling.spec import Prior, load_spec  # noqa: E402

HERE = Path(__file__).resolve().parent
CHAINS, TARGET_ACCEPT = 4, 0.99

#: name -> (notebook, families or None for the synthetic corpus, min_tokens, max_checkpoints, warmup, draws)
PROBLEMS = {
    "quickstart (synthetic, 8 families)": ("01", None, None, None, 1000, 1000),
    "posterior checks (5 families)": ("02", ("pythia", "opt", "overtrain-c4", "redpajama-incite", "olmo"), 1e10, 8, 500, 500),
    "overtrain trio": ("03, 04", ("overtrain-c4", "overtrain-rpj", "overtrain-rw"), 1e8, 30, 500, 500),
    "xlstm pair": ("04", ("xlstm-llama-ctx8192", "xlstm-mlstm-ctx8192-gbs256"), 1e10, 10, 500, 500),
    "pythia pair": ("04", ("pythia", "pythia-deduped"), 1e10, 10, 500, 500),
}
#: Draws (and warmup) of each problem in its notebook.
NOTEBOOK_DRAWS = {name: problem[-1] for name, problem in PROBLEMS.items()}


def problem_data(runs, families, min_tokens, max_checkpoints):
    """The table a notebook fits: the quickstart's synthetic corpus without its held-out run, or corpus families."""
    if families is None:
        synthetic, _ = bs.datasets.synthetic(n_families=8, seed=0, n_checkpoints=30)  # the notebook's corpus
        family = synthetic["family"].iloc[0]
        largest = synthetic.loc[synthetic["family"] == family, "num_params"].max()
        return synthetic[~((synthetic["family"] == family) & (synthetic["num_params"] == largest))]
    return bs.prepare(runs, bs.Filters(families=families, min_tokens=min_tokens, max_checkpoints=max_checkpoints))


#: The spreads' priors shipped before the log-normals (rates 4 for the levels, 10 for the exponents).
GAMMA_SCALES = tuple(Prior("gamma", (("concentration", 2.0), ("rate", rate))) for rate in (4.0, 4.0, 4.0, 10.0, 10.0))
SCALE_PRIORS = ("lognormal", "gamma")


def measure(data, effects: str, scale_prior: str, lkj: float, warmup: int, draws: int, seed: int) -> dict:
    spec = dataclasses.replace(
        load_spec("chinchilla_hierarchical"), family_effects=effects, correlation_prior=Prior("lkj", (("concentration", lkj),))
    )
    if scale_prior == "gamma":
        spec = dataclasses.replace(spec, family_scale_priors=GAMMA_SCALES)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bs.ConvergenceWarning)  # reported below with numbers
        fit = bs.fit(data, spec, population=None, chains=CHAINS, warmup=warmup, draws=draws, target_accept=TARGET_ACCEPT, seed=seed)
    seconds = time.perf_counter() - start
    report = diagnostics.convergence_report(fit)
    return {
        "divergences": report.divergences,
        "max r_hat": float(report.table["r_hat"].max()),
        "min bulk ESS": float(report.table["ess_bulk"].min()),
        "min tail ESS": float(report.table["ess_tail"].min()),
        "max tree depth %": 100 * (report.tree_depth_hits or 0) / (report.chains * report.draws),
        "verdict": report.verdict.upper(),
        "seconds": seconds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=bs.data.default_data_dir() / "runs.csv.gz")
    parser.add_argument("--effects", nargs="+", default=["level", "hybrid"])
    parser.add_argument("--scale-priors", nargs="+", choices=SCALE_PRIORS, default=list(SCALE_PRIORS))
    parser.add_argument("--lkj", nargs="+", type=float, default=None, help="LKJ concentrations (default: the spec's)")
    parser.add_argument("--draws", type=int, default=None, help="warmup and draws of every fit (default: its notebook's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    runs = bs.load_runs(args.runs)
    csv_path = args.out / "family_effects.csv"
    rows = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
    lkjs = args.lkj or [load_spec("chinchilla_hierarchical").correlation_prior.kwargs()["concentration"]]
    for name, (notebook, families, min_tokens, max_checkpoints, warmup, draws) in PROBLEMS.items():
        data = problem_data(runs, families, min_tokens, max_checkpoints)  # once per problem, for every seed
        warmup, draws = (args.draws, args.draws) if args.draws else (warmup, draws)
        for seed, effects, scale_prior, lkj in itertools.product(args.seeds, args.effects, args.scale_priors, lkjs):
            key = {"problem": name, "family_effects": effects, "scale_prior": scale_prior, "lkj": lkj, "draws": draws, "seed": seed}
            if len(rows) and (rows[list(key)] == pd.Series(key)).all(axis=1).any():
                continue
            row = {**key, "notebook": notebook, **measure(data, effects, scale_prior, lkj, warmup, draws, seed)}
            print(row, flush=True)
            rows = pd.concat([rows, pd.DataFrame([row])], ignore_index=True)
            with atomic_path(csv_path) as tmp:
                rows.to_csv(tmp, index=False)
    write_report(rows, args.out / "family_effects.md")


def write_report(rows: pd.DataFrame, path: Path) -> None:
    treatment = ["family_effects", "scale_prior", "lkj"]
    rows = rows.sort_values(["problem", "seed", *treatment, "draws"], key=lambda c: c.map(list(PROBLEMS).index) if c.name == "problem" else c)
    # a fit at its notebook's draws belongs to both settings where that is also an override
    settings = {"at each notebook's draws": rows["draws"] == rows["problem"].map(NOTEBOOK_DRAWS)}
    settings |= {f"fits run at {n} + {n}": rows["draws"] == n for n in sorted(rows["draws"].unique())}
    lines = [
        "# Joint model: how family parameters are sampled, and the prior of their spreads",
        "",
        "Script: `benchmarks/family_effects.py` (see its docstring). Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other developers; {CHAINS} chains (one CPU device each), "
        f"target_accept {TARGET_ACCEPT}; warmup as many as draws; seeds {sorted(rows['seed'].unique().tolist())}.",
    ]
    for title, chosen in settings.items():
        totals = rows[chosen].groupby([*treatment, "seed"]).agg(
            fits=("verdict", "size"),
            divergences=("divergences", "sum"),
            fail=("verdict", lambda v: int((v == "FAIL").sum())),
            seconds=("seconds", "sum"),
        )
        lines += ["", f"## Totals, {title}", "", md_table(totals.reset_index().round(0))]
    lines += [
        "",
        "## Per fit",
        "",
        md_table(rows.round({"max r_hat": 3, "min bulk ESS": 0, "min tail ESS": 0, "max tree depth %": 1, "seconds": 0})),
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
