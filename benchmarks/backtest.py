"""Back-test of issue 17: the path users run against the point fits, seeds 0-2.

    python benchmarks/backtest.py [--runs ../shared/data/runs.csv.gz] [--work benchmarks/.work]
                                  [--seeds 0 1 2] [--workers 2] [--out benchmarks/results] [--report-only]

Each seed runs exactly the command line a user would type,

    bayes-scaling backtest RUNS --out WORK/seedS --population public --seed S
        --estimators classic classic_huber bayes_hierarchical --k 1 2 3 4 5
        --fractions 1.0 --min-tokens 1e10 --executor process --num-cpus WORKERS

so ``bayes_hierarchical`` is ``fit(train, population=public without the family's source
group)`` + ``predict_loss(new_run)``, at the sampler defaults. Finished cells stay in
``WORK/seedS/cells``: a rerun resumes. Seeds change every cell's sampler (the shipped
population is the same in all). Then writes into ``--out``:

- ``backtest.csv``: every row of every seed (``seed`` column);
- ``backtest.md``: per seed, the bars (ARE against the better of classic and classic_huber
  by k; 90% coverage pooled over k), coverage by k, each with a 90% cluster-bootstrap
  interval over source groups (siblings resampled together), the mixing of the Bayesian
  cells, and the machine and settings;
- ``backtest_are_vs_k.png``, ``backtest_calibration.png`` (seed 0).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bayes_scaling import backtest as bt  # noqa: E402
from bayes_scaling import population as pop_mod  # noqa: E402
from bayes_scaling.cellfit import SAMPLER_DEFAULTS  # noqa: E402
from bayes_scaling.convergence import MIXED_RHAT  # noqa: E402
from bayes_scaling.cli import main as cli_main  # noqa: E402
from bayes_scaling.outputs import atomic_path, atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
ESTIMATORS = ("classic", "classic_huber", "bayes_hierarchical")
KS = (1, 2, 3, 4, 5)
CUT = 1e10
N_BOOT = 2000


def run_seed(runs: str, out: Path, seed: int, workers: int) -> float:
    """The user's command line for one seed; returns its wall time in seconds."""
    args = ["backtest", runs, "--out", str(out), "--population", "public", "--seed", str(seed),
            "--estimators", *ESTIMATORS, "--k", *map(str, KS), "--fractions", "1.0", "--min-tokens", f"{CUT:g}",
            "--executor", "process", "--num-cpus", str(workers), "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    code = cli_main(args)
    if code != 0:
        raise SystemExit(f"bayes-scaling backtest failed for seed {seed} (exit {code})")
    return time.perf_counter() - started


def _interval(scores, groups, column, statistic, seed) -> str:
    low, high = bt.cluster_bootstrap(scores, groups, column, statistic, n_boot=N_BOOT, seed=seed)
    return f"[{bt.pct(low)}, {bt.pct(high)}]"


def coverage_table(results: pd.DataFrame, groups: dict, seed: int) -> tuple[pd.DataFrame, str]:
    """90% coverage of bayes_hierarchical by k and pooled, each with its cluster-bootstrap interval."""
    hier = results[results["estimator"] == "bayes_hierarchical"]
    fam = bt.family_scores(hier, ("estimator", "k"))
    rows = []
    for k, sub in fam.groupby("k"):
        low, high = bt.chance_range(len(sub))
        rows.append(
            {
                "k": k,
                "families": len(sub),
                "cov 90% [90% CI]": f"{bt.pct(sub['cov_90'].mean())} {_interval(sub, groups, 'cov_90', np.mean, seed)}",
                "calibrated, by chance (95%)": f"{bt.pct(low)} - {bt.pct(high)}",
                "width 90% (median, % of loss)": bt.pct(sub["width_90"].median()),
            }
        )
    cov, n_cells = bt.pooled_coverage(results)
    lo_bar, hi_bar = bt.COVERAGE_BAR
    pooled = (
        f"pooled over k: **{bt.pct(cov)}%** {_interval(fam, groups, 'cov_90', np.mean, seed)} of {n_cells} "
        f"(family, k) cells; bar {bt.pct(lo_bar, 0)}-{bt.pct(hi_bar, 0)}%: **{'met' if lo_bar <= cov <= hi_bar else 'missed'}**"
    )
    return pd.DataFrame(rows), pooled


def are_intervals(results: pd.DataFrame, groups: dict, seed: int) -> pd.DataFrame:
    """Median ARE by estimator and k with cluster-bootstrap intervals."""
    fam = bt.family_scores(results, ("estimator", "k"))
    rows = []
    for k, by_k in fam.groupby("k"):
        row = {"k": k}
        for est in ESTIMATORS:
            sub = by_k[by_k["estimator"] == est]
            row[f"{est} median ARE % [90% CI]"] = f"{bt.pct(sub['are'].median(), 2)} {_interval(sub, groups, 'are', np.median, seed)}"
        rows.append(row)
    return pd.DataFrame(rows)


def mixing_sensitivity(results: pd.DataFrame) -> pd.DataFrame:
    """The bars' numbers three ways: every cell; a bayes_hierarchical cell whose chains did not
    mix (max r-hat > MIXED_RHAT) counted as a failed fit (ARE inf, not covered); only the
    (family, k) cells where it mixed, for every estimator."""
    hier = results["estimator"] == "bayes_hierarchical"
    unmixed = hier & (results["max_rhat"].astype(float) > MIXED_RHAT)
    as_failed = results.copy()
    as_failed.loc[unmixed, "status"] = "failed"
    as_failed.loc[unmixed, "cov_90"] = 0.0
    mixed_cells = results[hier & ~unmixed][["family", "k"]].drop_duplicates()
    variants = {"all cells": results, "unmixed counted as failed": as_failed, "mixed cells only": results.merge(mixed_cells, on=["family", "k"])}
    rows = []
    for name, df in variants.items():
        agg = bt.aggregate(df, ("estimator", "k")).set_index(["estimator", "k"])
        row = {"cells": name}
        for k in KS:
            if ("bayes_hierarchical", k) not in agg.index:
                continue
            h = agg.loc[("bayes_hierarchical", k)]
            best = min(agg.loc[(b, k), "are_median"] for b in bt.BASELINES if (b, k) in agg.index)
            row[f"k={k}: hier / best point median ARE % (families)"] = f"{bt.pct(h['are_median'], 2)} / {bt.pct(best, 2)} ({int(h['n_families'])})"
        row["hier cov 90% pooled"] = bt.pct(bt.pooled_coverage(df)[0])
        rows.append(row)
    return pd.DataFrame(rows)


def mixing(results: pd.DataFrame) -> str:
    cells = results[results["estimator"] == "bayes_hierarchical"].drop_duplicates(list(bt.CELL_KEY_COLUMNS))
    rhat = cells["max_rhat"].astype(float)
    return (
        f"{len(cells)} bayes_hierarchical cells: {int((rhat > 1.05).sum())} with max r-hat > 1.05, {int((rhat > 1.01).sum())} above 1.01, "
        f"{int((cells['status'] != 'ok').sum())} not ok, {int(cells['divergences'].fillna(0).gt(0).sum())} with divergences; "
        f"fit seconds per cell median {cells['fit_seconds'].median():.1f}, summed {cells['fit_seconds'].sum() / 60:.1f} min"
    )


def headline(all_results: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the (family, k) cells whose chains mixed, and every cell with an unmixed one
    counted as a failed fit (rows of :func:`mixing_sensitivity`)."""
    rows = []
    for seed, results in all_results.groupby("seed"):
        table = mixing_sensitivity(results).set_index("cells")
        for name in ("mixed cells only", "unmixed counted as failed"):
            rows.append({"seed": seed, "cells": name, **table.loc[name].to_dict()})
    return pd.DataFrame(rows)


def summarise(all_results: pd.DataFrame, groups: dict, meta: dict) -> str:
    out = [
        "# Back-test of issue 17: the public path (bayes_hierarchical) against the point fits",
        "",
        "Held out: each family's largest size (checkpoints past 70% of its tokens); trained on the k smallest sizes, "
        "tokens >= 1e10, fraction 1.0. `bayes_hierarchical` is exactly `bs.fit(train, population=P)` + "
        "`predict_loss(new_run)`, P the shipped public population without the held-out family's source group. "
        "ARE per family: mean over its targets; failed fits count as ARE inf (100% capped). Intervals in brackets: "
        f"90% cluster bootstrap over source groups ({N_BOOT} resamples; siblings move together).",
        "",
        "## Settings",
        "",
        *[f"- **{k}**: {v}" for k, v in meta.items()],
        "",
        "## Headline: cells whose chains mixed (issue 18)",
        "",
        f"A bayes_hierarchical cell whose chains did not mix (max r-hat > {MIXED_RHAT}) says more about the sampler than "
        "about the data: the first row of each seed keeps only the (family, k) cells where they mixed, for every estimator; "
        "the second keeps every cell and counts an unmixed one as a failed fit (ARE inf, nothing covered). The bars of "
        "issue 17, per seed below, are on all cells.",
        "",
        bt.md_table(headline(all_results)),
        "",
    ]
    for seed, results in all_results.groupby("seed"):
        cov_by_k, pooled = coverage_table(results, groups, int(seed))
        out += [
            f"## Seed {seed}",
            "",
            "### ARE bars (median / capped mean, %)",
            "",
            bt.md_table(bt.bars(results, CUT, 1.0)),
            "",
            "### Median ARE with intervals",
            "",
            bt.md_table(are_intervals(results, groups, int(seed))),
            "",
            "### 90% coverage of bayes_hierarchical",
            "",
            bt.md_table(cov_by_k),
            "",
            pooled,
            "",
            "### Mixing",
            "",
            mixing(results),
            "",
            bt.md_table(mixing_sensitivity(results)),
            "",
        ]
    return "\n".join(out)


def _plots(results: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayes_scaling.plots.backtest import plot_are_vs_k, plot_calibration

    fig, ax = plt.subplots(figsize=(6, 4))
    plot_are_vs_k(results, min_tokens=CUT, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "backtest_are_vs_k.png", dpi=110)
    fig, ax = plt.subplots(figsize=(5, 5))
    plot_calibration(results, min_tokens=CUT, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "backtest_calibration.png", dpi=110)
    plt.close("all")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE.parent.parent / "shared" / "data" / "runs.csv.gz"))
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="per-seed back-test directories (resumable)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--note", default=None, help="a line for the settings (e.g. wall times of an earlier run whose cells this one resumed)")
    parser.add_argument("--report-only", action="store_true", help="rewrite backtest.md from --out's backtest.csv and backtest_meta.json; run nothing")
    args = parser.parse_args(argv)
    groups = pop_mod.source_groups(bt.primary_table(args.runs))
    if args.report_only:
        results = pd.read_csv(args.out / "backtest.csv")
        text = summarise(results, groups, json.loads((args.out / "backtest_meta.json").read_text()))
        atomic_write_text(args.out / "backtest.md", text)
        print(text)
        return 0
    frames, wall = [], {}
    for seed in args.seeds:
        wall[seed] = run_seed(args.runs, args.work / f"seed{seed}", seed, args.workers)
        frames.append(pd.read_csv(args.work / f"seed{seed}" / "backtest.csv").assign(seed=seed))
    results = pd.concat(frames, ignore_index=True)
    public = pop_mod.resolve("public")
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work ({platform.platform()}), no accelerator",
        "date": time.strftime("%Y-%m-%d"),
        "cells": f"{results.drop_duplicates(['seed', *bt.CELL_KEY_COLUMNS]).shape[0]} over seeds {args.seeds}; "
        f"{results['family'].nunique()} families in {len({groups.get(f, f) for f in results['family'].unique()})} source groups",
        "sampler (bayes_hierarchical)": ", ".join(f"{k}={v}" for k, v in {**SAMPLER_DEFAULTS, **bt.BAYES_SETTINGS}.items()),
        "population": f"shipped public ({len(public.families)} members, built at tokens >= {public.settings.get('min_tokens', CUT):g})",
        "workers": f"{args.workers} processes",
        "wall time of this invocation": ", ".join(f"seed {s}: {t / 60:.1f} min" for s, t in wall.items())
        + " (a seed whose cells were already in --work only resumes)",
    }
    if args.note:
        meta["note"] = args.note
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "backtest.csv") as tmp:
        bt.scores_only(results).to_csv(tmp, index=False)  # the corpus's losses stay out of the repository
    atomic_write_text(args.out / "backtest_meta.json", json.dumps(meta, indent=1))
    text = summarise(results, groups, meta)
    atomic_write_text(args.out / "backtest.md", text)
    _plots(results[results["seed"] == args.seeds[0]], args.out)
    print(text)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
