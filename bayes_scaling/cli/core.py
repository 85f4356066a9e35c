"""Core commands: ``demo``, ``fit`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..cellfit import SAMPLER_DEFAULTS, TEMPERATURES
from ..convergence import MAX_R_HAT, MIN_ESS_PER_CHAIN, MIXED_RHAT
from ..data import Filters
from ..errors import ConvergenceWarning, FitError
from ..outputs import atomic_path, require_writable_dir, require_writable_file
from ..spec import load_spec
from .common import add_sampler_args, counted, positive_float, positive_int, write_table


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="predict a real 2B-parameter run from its family's two smallest sizes (Gemstones), scored against what it reached",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory (default demo-out)")
    demo.add_argument("--synthetic", action="store_true", help="the synthetic demo instead: a corpus with known truth, joint model")
    demo.add_argument("--quick", action="store_true", help="fewer draws (and, with --synthetic, fewer families)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the corpus and the sampler (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(func=run_demo)

    fit = subparsers.add_parser("fit", help="fit the scaling law to a runs table (CSV, CSV.gz or Parquet)")
    fit.add_argument("runs", type=Path, help="runs table")
    fit.add_argument("--out", type=Path, required=True, help="where to write the fit (NetCDF)")
    fit.add_argument(
        "--population", default="public",
        help="what each family borrows: 'public' (the population shipped with the package, default), "
        "a population file from 'bayes-scaling population build', or 'none' for the joint model of --spec",
    )
    fit.add_argument("--spec", default=None, help="joint model spec (with --population none): shipped name or .toml path (default chinchilla_hierarchical)")
    fit.add_argument("--min-tokens", type=float, default=None, help="drop checkpoints below this many tokens (spec default 1e10)")
    fit.add_argument("--max-checkpoints", type=positive_int, default=None, help="thin each run to at most K log-spaced checkpoints")
    fit.add_argument("--families", nargs="+", default=None, help="fit only these families")
    fit.add_argument("--drop-emptied", action="store_true", help="drop families a filter leaves empty instead of failing")
    fit.add_argument("--float32", action="store_true", help="sample in float32 (joint model; faster on large corpora, more divergences)")
    add_sampler_args(
        fit, chains=None, warmup=None, draws=None, target_accept=None,
        default_note="defaults: 2 chains x (1000 warmup + 1000 draws) at target acceptance 0.9 per family with a population "
        f"(chains carried on to {SAMPLER_DEFAULTS['retry_thinning']}x as long, thinned by {SAMPLER_DEFAULTS['retry_thinning']}, when r_hat > {MAX_R_HAT} or ESS < {MIN_ESS_PER_CHAIN} per chain: --retry-thinning); "
        "4 x (500 + 500) at 0.95 for the joint model",
    )
    fit.add_argument(
        "--retry-thinning", type=positive_int, default=None,
        help=f"with a population: a family whose fit has r_hat > {MAX_R_HAT} or ESS < {MIN_ESS_PER_CHAIN} per chain has its chains carried on to K times the iterations, "
        f"every K-th draw kept (default {SAMPLER_DEFAULTS['retry_thinning']}; 1: never)",
    )
    fit.add_argument(
        "--tempering", action="store_true",
        help=f"with a population: a family whose fit has r_hat > {MIXED_RHAT} (chains in different modes) is fitted again as a replica "
        f"exchange over {len(TEMPERATURES)} temperatures instead of being carried on (six NUTS chains for each chain; its cost and why it is not the default: see the README)",
    )
    fit.set_defaults(func=run_fit)

    predict = subparsers.add_parser("predict", help="posterior predictive loss of a saved fit at (N, D)")
    predict.add_argument("fit", type=Path, help="fit written by `bayes-scaling fit` (NetCDF)")
    predict.add_argument("--family", help="family of the fit (not needed with --new-family)")
    predict.add_argument("--params", type=positive_float, nargs="+", required=True, help="parameter count(s) N")
    predict.add_argument("--tokens", type=positive_float, nargs="+", required=True, help="training tokens D")
    kind = predict.add_mutually_exclusive_group()
    kind.add_argument("--new-run", action="store_true", help="a run not yet trained (adds seed-to-seed spread)")
    kind.add_argument("--new-family", action="store_true", help="a family absent from the fit (population draw)")
    predict.add_argument("--noise", action="store_true", help="include checkpoint noise (compare with an observed loss)")
    predict.add_argument("--seed", type=int, default=0)
    predict.add_argument("--format", choices=("table", "csv", "json"), default="table")
    predict.set_defaults(func=run_predict)


def convergence_summary(fit) -> str:
    """The one-screen convergence verdict printed after every fit."""
    from ..diagnostics import convergence_report, format_convergence_summary

    return format_convergence_summary(convergence_report(fit))


def run_demo(args: argparse.Namespace) -> int:
    return run_synthetic_demo(args) if args.synthetic else run_real_demo(args)


def run_real_demo(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from ..demo import REAL_DEMO, run_real_demo as demo
    from ..plots import plot_loss_curves
    from ..predict import predict_loss, summarize

    sampler = {"chains": 2, "warmup": 300, "draws": 300} if args.quick else {}
    out = require_writable_dir(args.out, "--out")
    print(
        f"demo: {REAL_DEMO['family']} (MIT; see NOTICE.md): fit its {REAL_DEMO['k']} smallest model sizes under the public "
        f"population without the '{REAL_DEMO['group']}' source group, predict its largest run as a run not yet trained",
        file=sys.stderr,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below with the verdict
        result = demo(seed=args.seed, **sampler)
    elapsed = time.perf_counter() - start
    sizes = ", ".join(f"{n / 1e6:.0f}M" for n in sorted(result.train["num_params"].unique()))
    target = result.target
    print(f"\ntrained on {result.train['model'].nunique()} runs ({sizes} parameters, {len(result.train)} checkpoints >= 1e10 tokens)")
    print(f"prior: {result.population_source}")
    print(f"target: {target['model'].iloc[0]} ({target['num_params'].iloc[0] / 1e9:.2f}B parameters), last 30% of training (loss in nats):")
    shown = result.table.iloc[np.unique(np.linspace(0, len(result.table) - 1, 8).round().astype(int))]
    write_table(shown[["tokens", "observed", "median", "q05", "q95", "inside_90"]], "table")
    print(f"\ncoverage of 90% intervals: {result.coverage:.0%} of {len(result.table)} target checkpoints")
    print(f"median absolute relative error: {result.median_are:.2%}")
    print(f"fit time: {elapsed:.0f} s")
    print(convergence_summary(result.fit))

    family, n_target = REAL_DEMO["family"], target["num_params"].iloc[0]
    tokens = np.geomspace(result.train["tokens"].min(), target["tokens"].max(), 60)
    bands = [  # the fitted law at the trained sizes, and the planned run at the target size
        summarize(predict_loss(result.fit, family, n, tokens, kind="family", seed=args.seed)) for n in sorted(result.train["num_params"].unique())
    ]
    bands.append(summarize(predict_loss(result.fit, family, n_target, tokens, kind="new_run", observation_noise=True, seed=args.seed)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_loss_curves(result.train, pd.concat(bands), held_out=target, ax=ax)
    ax.set_title(f"{family}: {target['model'].iloc[0]} predicted from {sizes} (50% / 90% bands)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out / "demo_fan.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    with atomic_path(out / "demo_predictions.csv") as tmp:
        result.table.to_csv(tmp, index=False)
    result.fit.save(out / "demo_fit.nc")
    print(f"wrote {out / 'demo_predictions.csv'}, {out / 'demo_fan.png'}, {out / 'demo_fit.nc'}")
    return 0


def run_synthetic_demo(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from ..demo import DEMO_SETTINGS, QUICK_SETTINGS, run_demo as demo
    from ..plots import grid_axes, plot_loss_curves
    from ..predict import predict_loss, summarize

    settings = QUICK_SETTINGS if args.quick else DEMO_SETTINGS
    out = require_writable_dir(args.out, "--out")
    print(
        f"demo: synthetic corpus of {settings['n_families']} families; fitting with each family's largest model held out "
        f"({settings['chains']} chains x {settings['draws']} draws)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True):  # recorded, not printed: the verdict says it
        warnings.simplefilter("always", ConvergenceWarning)
        result = demo(
            settings["n_families"],
            chains=settings["chains"],
            warmup=settings["warmup"],
            draws=settings["draws"],
            seed=args.seed,
            progress_bar=not args.no_progress,
        )
    elapsed = time.perf_counter() - start
    table = result.table
    print("\nHeld-out largest model of each family, predicted as a new run (loss in nats):")
    write_table(table[["family", "model", "num_params", "tokens", "observed", "true", "median", "q05", "q95", "inside_90"]], "table")
    print(
        f"\ncoverage of 90% intervals: {result.coverage:.0%} of final losses, "
        f"{result.checkpoint_coverage:.0%} of checkpoints in the last 30% of training"
    )
    print(f"median absolute relative error: {table['abs_rel_error'].median():.2%}")
    print(f"fit time: {elapsed:.0f} s")
    print(convergence_summary(result.fit))

    families = list(table["family"])[:9]
    fig, axes = grid_axes(len(families))
    for ax, family in zip(axes, families):
        held = result.held_out[result.held_out["family"] == family]
        pred = summarize(
            predict_loss(result.fit, family, held["num_params"].iloc[0], held["tokens"].sort_values(), kind="new_run", seed=args.seed)
        )
        plot_loss_curves(result.train[result.train["family"] == family], pred, held_out=held, ax=ax, title=family)
    fig.tight_layout()
    with atomic_path(out / "demo_curves.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    with atomic_path(out / "demo_predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    result.fit.save(out / "demo_fit.nc")
    print(f"wrote {out / 'demo_predictions.csv'}, {out / 'demo_curves.png'}, {out / 'demo_fit.nc'}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    from ..data import prepare
    from ..inference import fit
    from ..popfit import POPULATION_SPEC
    from ..population import resolve

    require_writable_file(args.out, "--out")  # before minutes of sampling, not after
    joint = args.population.lower() == "none"
    if args.spec is not None and not joint:
        raise FitError("--spec chooses the joint model's spec; add --population none to fit it")
    if (args.retry_thinning is not None or args.tempering) and joint:
        raise FitError("--retry-thinning and --tempering are settings of the population path; the joint model (--population none) samples once")
    population = None if joint else resolve(args.population)  # a bad file fails before any sampling
    spec = load_spec((args.spec or "chinchilla_hierarchical") if joint else POPULATION_SPEC)
    defaults = Filters(**spec.data)
    filters = Filters(
        min_tokens=defaults.min_tokens if args.min_tokens is None else args.min_tokens,
        max_checkpoints=defaults.max_checkpoints if args.max_checkpoints is None else args.max_checkpoints,
        primary_only=defaults.primary_only,
        families=tuple(args.families) if args.families else None,
        drop_emptied=args.drop_emptied,
    )
    data = prepare(args.runs, filters, spec.reference_params, spec.reference_tokens)
    model = f"joint model {spec.name}" if joint else f"each family under the population of {len(population.families)} families ({args.population})"
    print(
        f"fit: {model}; {counted(len(data.families), 'family', 'families')}, {counted(len(data.runs), 'run')}, "
        f"{counted(data.n_checkpoints, 'checkpoint')} "
        f"(min_tokens={filters.min_tokens:g}, max_checkpoints={filters.max_checkpoints})",
        file=sys.stderr,
    )
    for family, reason in data.dropped_families.items():
        print(f"  dropped {family}: emptied by {reason}", file=sys.stderr)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below with the verdict
        sampler = dict(chains=args.chains, warmup=args.warmup, draws=args.draws, seed=args.seed, target_accept=args.target_accept)
        if joint:
            result = fit(data, spec, population=None, progress_bar=not args.no_progress, x64=not args.float32, **sampler)
        else:
            from ..popfit import fit_with_population

            done = []

            def progress(family):
                print(f"  fitted {family} ({len(done) + 1}/{len(data.families)}, {time.perf_counter() - start:.0f} s)", file=sys.stderr)
                done.append(family)

            sampler.update(retry_thinning=args.retry_thinning, tempering=args.tempering)
            result = fit_with_population(data, population, progress=None if args.no_progress else progress, **{k: v for k, v in sampler.items() if v is not None})
    elapsed = time.perf_counter() - start
    path = result.save(args.out)
    print(f"sampled in {elapsed:.0f} s; wrote {path}")
    print(convergence_summary(result))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..inference import Fit
    from ..predict import predict_loss, summarize

    if not args.new_family and not args.family:
        raise FitError("--family is required (or use --new-family)")
    kind = "new_family" if args.new_family else "new_run" if args.new_run else "family"
    if len(args.params) != len(args.tokens) and 1 not in (len(args.params), len(args.tokens)):
        raise FitError(f"--params has {len(args.params)} values and --tokens {len(args.tokens)}: give equal counts or one of either")
    fit = Fit.load(args.fit)
    pred = predict_loss(fit, args.family, args.params, args.tokens, kind=kind, observation_noise=args.noise, seed=args.seed)
    write_table(summarize(pred), args.format)
    return 0
