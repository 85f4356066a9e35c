"""Back-test of the four estimators on the whole shared corpus (issue 3).

    python benchmarks/backtest.py [--runs ../shared/data/runs.csv.gz] [--out benchmarks/results]

Writes ``backtest.csv`` (one row per family x target x k x fraction x cut x estimator),
``backtest.md`` (summary), ``backtest_population.csv`` and plots into ``--out``.

Settings sized to finish within an hour on 2 CPU cores, the cells and population fits
spread over two worker processes (``--workers``):
point fits on every cell (k = 1..5, fractions 0.1, 0.2, 0.3, 0.5, 1.0, cuts 1e10 and 0);
the Bayesian estimators on fraction 1.0 only, k = 1..5 at the 1e10 cut and k = 1..2 at the
0 cut, each Bayesian cell a 2-chain NUTS fit (1000 warmup + 1000 draws, tree depth <= 8;
with 300 + 300 half the cells at the 1e10 cut had r_hat > 1.2, see backtest_mixing.py), the
population fits of ``bayes_hierarchical`` the same (at 300 + 300 8 of 22 were unmixed, r_hat
up to 6.3), with a size discrepancy of half-normal scale 0.02 (``--population-size-scale``),
summarised for each held-out family by the Student-t predictive of a random-effects fit of
the other families' posteriors (``--population-summary``; ``mixture``: their equal-weight
mixture); families whose loss is in another unit (``backtest.UNCOMPARABLE_CURVES``) stay out
of every population and borrow only its exponents and scales.
One compiled sampler per shape bucket and worker serves every cell (compilation, 1-2
minutes each on the busy machine; at 1000 + 1000 a cell then samples in about 9 s on average).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bayes_scaling import backtest as bt  # noqa: E402
from bayes_scaling.cellfit import POPULATION_SUMMARIES  # noqa: E402
from bayes_scaling.distributed import make_executor  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(HERE.parent / ".." / "shared" / "data" / "runs.csv.gz"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(bt.FRACTIONS))
    parser.add_argument("--cuts", type=float, nargs="+", default=[1e10, 0.0])
    parser.add_argument("--bayes-ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--bayes-ks-cut0", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bayes-fractions", type=float, nargs="+", default=[1.0])
    parser.add_argument("--estimators", nargs="+", default=list(bt.ESTIMATORS))
    parser.add_argument("--families", nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=2, help="NUTS chains per Bayesian cell / population fit")
    parser.add_argument("--warmup", type=int, default=1000, help="NUTS warmup per Bayesian cell")
    parser.add_argument("--draws", type=int, default=1000, help="NUTS draws per Bayesian cell")
    parser.add_argument("--population-warmup", type=int, default=1000, help="NUTS warmup per population fit")
    parser.add_argument("--population-draws", type=int, default=1000, help="NUTS draws per population fit")
    parser.add_argument(
        "--population-size-scale", type=float, default=0.02,
        help="half-normal scale of the size discrepancy in each population fit; 0: none",
    )
    parser.add_argument(
        "--population-summary", choices=list(POPULATION_SUMMARIES), default=bt.POPULATION_SETTINGS["summary"],
        help="how the other families' posteriors become a held-out family's prior",
    )
    parser.add_argument("--max-tree-depth", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the cells (1: this process)")
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="rebuild backtest.md and the plots from an existing backtest.csv (+ meta from backtest_meta.json)",
    )
    parser.add_argument(
        "--fans", type=int, default=None, metavar="K",
        help="only draw fan charts at this k for every family (classic, classic_huber, bayes_independent) into backtest_fans.png",
    )
    parser.add_argument("--resume", action="store_true", help="keep backtest.csv and skip the cells it already holds")
    parser.add_argument("--note", default=None, help="extra line for the settings of the summary")
    args = parser.parse_args(argv)
    if args.summarize_only:
        return summarize_only(args)
    if args.fans is not None:
        return fans(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    table = bt.primary_table(args.runs)
    protocol = bt.protocol_cells(table, ks=args.ks, fractions=args.fractions, min_tokens=args.cuts, families=args.families)
    log = open(out / "backtest_progress.log", "a" if args.resume else "w")

    def note(msg):
        log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log.flush()

    point = [e for e in args.estimators if e not in bt.BAYES_ESTIMATORS]
    bayes = [e for e in args.estimators if e in bt.BAYES_ESTIMATORS]

    def cut_protocol(cut):
        return bt.Protocol(
            tuple(c for c in protocol.cells if c.min_tokens == cut),
            protocol.families,
            protocol.skipped_families,
            protocol.diverged_targets,
            protocol.empty_cells,
        )

    def bayes_ks(cut):
        return args.bayes_ks if cut >= 1e10 else args.bayes_ks_cut0

    def hierarchical_pending(cut):
        """Whether a bayes_hierarchical cell at this cut is still to run (a resume skips the population fits otherwise)."""
        # the cells of bayes_independent, which need no population, select the same (family, k, fraction)
        cells = bt.build_cells(cut_protocol(cut), ["bayes_independent"], bayes_fractions=args.bayes_fractions, bayes_ks=bayes_ks(cut))
        return any(c.key[:-1] + ("bayes_hierarchical",) not in done for c in cells)

    bayes_settings = {"chains": args.chains, "warmup": args.warmup, "draws": args.draws, "max_tree_depth": args.max_tree_depth}
    done = bt.done_keys(out / "backtest.csv") if args.resume else set()
    sink = bt.CsvSink(out / "backtest.csv", append=args.resume)
    executor = make_executor("process", num_cpus=args.workers) if args.workers > 1 else bt.LocalExecutor()
    frames = [pd.read_csv(out / "backtest.csv")] if done else []
    # stage 1: point fits on every cell
    cells = [c for cut in args.cuts for c in bt.build_cells(cut_protocol(cut), point) if c.key not in done]
    note(f"stage 1: {len(cells)} point-fit cells")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tqdm(total=len(cells), desc="point cells", unit="cell", mininterval=10) as bar:
            frames.append(bt.run_cells(cells, seed=args.seed, sink=sink, progress=lambda _: bar.update(), executor=executor))
    note("stage 1 done")
    # stages 2 and 3, cut by cut (1e10 first: the bars): population fits (leave-one-family-out),
    # then the Bayesian cells, grouped by shape bucket so compilations are reused
    # a resume keeps the population fits of the cuts it does not refit
    info = [pd.read_csv(out / "backtest_population.csv")] if done and (out / "backtest_population.csv").exists() else []
    population_seconds = 0.0
    for cut in args.cuts:
        population = {}
        hierarchical = "bayes_hierarchical" in bayes and hierarchical_pending(cut)
        if hierarchical:
            population_started = time.perf_counter()
            scored = sorted({c.family for c in protocol.cells if c.min_tokens == cut})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                priors, pinfo = bt.population_priors(
                    table,
                    scored,
                    cut,
                    seed=args.seed,
                    chains=args.chains,
                    warmup=args.population_warmup,
                    draws=args.population_draws,
                    size_scale=args.population_size_scale or None,
                    summary=args.population_summary,
                    executor=executor,
                    progress=lambda f: note(f"population {cut:g} {f}"),
                )
            population[cut] = priors
            info = [i[i["min_tokens"] != cut] for i in info] + [pinfo]
            pd.concat(info, ignore_index=True).to_csv(out / "backtest_population.csv", index=False)
            population_seconds += time.perf_counter() - population_started
        if not bayes:
            continue
        cells = bt.build_cells(
            cut_protocol(cut),
            [e for e in bayes if hierarchical or e != "bayes_hierarchical"],
            bayes_fractions=args.bayes_fractions,
            bayes_ks=bayes_ks(cut),
            population=population,
            bayes_settings=bayes_settings,
        )
        cells = [c for c in cells if c.key not in done]
        cells.sort(key=lambda c: (c.estimator, c.data.n_train.bit_length(), c.key))
        note(f"stage 3 (cut {cut:g}): {len(cells)} Bayesian cells")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tqdm(total=len(cells), desc=f"Bayesian cells (cut {cut:g})", unit="cell", mininterval=10) as bar:

                def finished(cell):
                    bar.update()
                    note(f"cell {cell.key}")

                frames.append(bt.run_cells(cells, seed=args.seed, sink=sink, progress=finished, executor=executor))
    getattr(executor, "close", lambda: None)()
    population_info = pd.concat(info, ignore_index=True) if info else pd.DataFrame()
    results = pd.concat(frames, ignore_index=True)
    cells_run = len(results.drop_duplicates(list(bt.CELL_KEY_COLUMNS)))
    elapsed = time.perf_counter() - started
    secs = results.groupby("estimator")["fit_seconds"].sum()
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other developers ({platform.platform()})",
        "corpus": "shared runs.csv.gz (primary metric rows)",
        "protocol": "families >= 3 sizes; targets = runs of the largest size, checkpoints >= 0.7 x max tokens; "
        "training = k smallest sizes, tokens >= cut, tokens <= fraction x max; runs thinned to <= 30 log-spaced checkpoints",
        "point-fit cells": f"k in {args.ks}, fractions {args.fractions}, cuts {args.cuts}",
        "Bayesian cells": f"fractions {args.bayes_fractions}; k in {args.bayes_ks} at cut 1e10, k in {args.bayes_ks_cut0} at cut 0",
        "Bayesian sampler": ", ".join(f"{k}={v}" for k, v in {**bt.BAYES_SETTINGS, **bayes_settings}.items()),
        "population (bayes_hierarchical)": f"leave-one-family-out {args.population_summary} of per-family posteriors; "
        + f"per-family NUTS with chains={args.chains}, warmup={args.population_warmup}, draws={args.population_draws}, "
        f"max_checkpoints={bt.POPULATION_SETTINGS['max_checkpoints']} per run, "
        f"size discrepancy half-normal scale {args.population_size_scale or 'none'}; "
        f"curves in other units {list(bt.UNCOMPARABLE_CURVES)} (metric, eval set prefix) in no population, borrowing exponents only",
        "workers": f"{args.workers} process(es) for the cells and the population fits",
        "cells run": cells_run,
        "wall time": f"{elapsed / 60:.1f} min (population fits {population_seconds / 60:.1f} min); summed fit seconds by estimator: "
        + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()),
        "seed": args.seed,
    }
    meta_path = out / "backtest_meta.json"
    if done and meta_path.exists():
        # a resume: keep the settings the first run recorded, say what this one added; population
        # fits it ran itself are described by its own settings
        resumed = f"{cells_run - len(done)} cells added in {elapsed / 60:.1f} min (population fits {population_seconds / 60:.1f} min)"
        population = meta["population (bayes_hierarchical)"]
        meta = json.loads(meta_path.read_text()) | {"cells run": cells_run, "resumed": resumed}
        if population_seconds > 0:
            meta["population (bayes_hierarchical)"] = population
    if args.note:
        meta["note"] = args.note
    (out / "backtest_meta.json").write_text(json.dumps(meta, indent=1))
    (out / "backtest.md").write_text(bt.summary_markdown(results, protocol, meta, population_info))
    try:
        _plots(results, out)
    except Exception as exc:  # noqa: BLE001 - plots are a bonus, never lose the numbers
        print(f"plots failed: {exc}")
    print(f"done in {elapsed / 60:.1f} min -> {out}")
    return 0


def summarize_only(args) -> int:
    out = Path(args.out)
    results = pd.read_csv(out / "backtest.csv")
    meta_path = out / "backtest_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    pop_path = out / "backtest_population.csv"
    population_info = pd.read_csv(pop_path) if pop_path.exists() else None
    protocol = bt.protocol_cells(args.runs, ks=args.ks, fractions=args.fractions, min_tokens=args.cuts, families=args.families)
    (out / "backtest.md").write_text(bt.summary_markdown(results, protocol, meta, population_info))
    _plots(results, out)
    return 0


def fans(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayes_scaling.plots.backtest import plot_fan

    out = Path(args.out)
    cut = args.cuts[0]
    protocol = bt.protocol_cells(args.runs, ks=[args.fans], fractions=[1.0], min_tokens=cut, families=args.families)
    families = sorted({c.family for c in protocol.cells})
    ncol = 4
    nrow = int(np.ceil(len(families) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ax, family in tqdm(list(zip(axes.flat, families)), desc="fans"):
            data = bt.fan_data(
                args.runs, family, args.fans, estimators=("classic", "classic_huber", "bayes_independent"),
                min_tokens=cut, seed=args.seed,
                bayes_settings={"chains": args.chains, "warmup": args.warmup, "draws": args.draws, "max_tree_depth": args.max_tree_depth},
            )
            plot_fan(data, ax=ax)
    for ax in list(axes.flat)[len(families):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out / f"backtest_fans_k{args.fans}.png", dpi=80)
    return 0


def _plots(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayes_scaling.plots.backtest import plot_are_vs_k, plot_calibration

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, cut in zip(axes, (1e10, 0.0)):
        plot_are_vs_k(results, min_tokens=cut, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "backtest_are_vs_k.png", dpi=110)
    fig, ax = plt.subplots(figsize=(5, 5))
    plot_calibration(results, min_tokens=1e10, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "backtest_calibration.png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
