"""Core commands: ``demo``, ``fit`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ..data import Filters
from ..errors import ConvergenceWarning, FitError
from ..outputs import atomic_path, require_writable_dir, require_writable_file
from ..spec import load_spec
from .common import add_sampler_args, positive_float, positive_int, write_table


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="fit the built-in synthetic corpus and score held-out predictions")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory (default demo-out)")
    demo.add_argument("--quick", action="store_true", help="fewer families and draws (about a minute)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the corpus and the sampler (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(func=run_demo)

    fit = subparsers.add_parser("fit", help="fit a model spec to a runs table (CSV, CSV.gz or Parquet)")
    fit.add_argument("runs", type=Path, help="runs table")
    fit.add_argument("--out", type=Path, required=True, help="where to write the fit (NetCDF)")
    fit.add_argument("--spec", default="chinchilla_hierarchical", help="shipped spec name or path to a .toml")
    fit.add_argument("--min-tokens", type=float, default=None, help="drop checkpoints below this many tokens (spec default 1e10)")
    fit.add_argument("--max-checkpoints", type=positive_int, default=None, help="thin each run to at most K log-spaced checkpoints")
    fit.add_argument("--families", nargs="+", default=None, help="fit only these families")
    fit.add_argument("--drop-emptied", action="store_true", help="drop families a filter leaves empty instead of failing")
    fit.add_argument("--float32", action="store_true", help="sample in float32 (faster on large corpora, more divergences)")
    add_sampler_args(fit)
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
    with warnings.catch_warnings(record=True) as caught:
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

    require_writable_file(args.out, "--out")  # before minutes of sampling, not after
    spec = load_spec(args.spec)
    defaults = Filters(**spec.data)
    filters = Filters(
        min_tokens=defaults.min_tokens if args.min_tokens is None else args.min_tokens,
        max_checkpoints=defaults.max_checkpoints if args.max_checkpoints is None else args.max_checkpoints,
        primary_only=defaults.primary_only,
        families=tuple(args.families) if args.families else None,
        drop_emptied=args.drop_emptied,
    )
    data = prepare(args.runs, filters, spec.reference_params, spec.reference_tokens)
    print(
        f"fit: {spec.name} on {len(data.families)} families, {len(data.runs)} runs, {data.n_checkpoints} checkpoints "
        f"(min_tokens={filters.min_tokens:g}, max_checkpoints={filters.max_checkpoints})",
        file=sys.stderr,
    )
    for family, reason in data.dropped_families.items():
        print(f"  dropped {family}: emptied by {reason}", file=sys.stderr)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below with the verdict
        result = fit(
            data,
            spec,
            chains=args.chains,
            warmup=args.warmup,
            draws=args.draws,
            seed=args.seed,
            target_accept=args.target_accept,
            progress_bar=not args.no_progress,
            x64=not args.float32,
        )
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
