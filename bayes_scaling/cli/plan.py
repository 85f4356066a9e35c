"""``bayes-scaling plan``: which pilot run to train next, ranked by expected information per FLOP.

    bayes-scaling plan FIT.nc --family F --target-params N --target-tokens D [--budget-flops C] [--candidates FILE]

Prints the candidates ranked by the expected shrinkage of the target's 90% interval per
FLOP (:func:`bayes_scaling.plan.next_run`) and writes a plot of expected width against
cumulative pilot compute.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .common import positive_float, positive_int, write_table

COLUMNS = ["rank", "label", "num_params", "tokens", "seeds", "flops", "cumulative_flops", "expected_width", "width_q10",
           "width_q90", "width_reduction", "reduction_per_flop", "ess_mean", "ess_share_low", "ess_low"]


def register(subparsers) -> None:
    """Add the ``plan`` subcommand."""
    parser = subparsers.add_parser(
        "plan",
        help="rank candidate pilot runs by expected shrinkage of the target's interval per FLOP",
        description="For each candidate run, simulate its loss curve from the posterior predictive, re-weight the "
        "posterior draws by its likelihood, and report the expected width of the target's 90% interval after it, "
        "and the reduction per FLOP (6ND). Candidates default to a grid of sizes from the family's smallest run to "
        "the target, at 0.5, 1 and 2 times the target's tokens per parameter.",
    )
    parser.add_argument("fit", type=Path, help="saved fit (NetCDF written by `bayes-scaling fit`)")
    parser.add_argument("--family", required=True, help="family of the fit to plan for")
    parser.add_argument("--target-params", type=positive_float, required=True, help="parameters N of the target run")
    parser.add_argument("--target-tokens", type=positive_float, required=True, help="training tokens D of the target run")
    parser.add_argument("--budget-flops", type=positive_float, default=None, help="drop candidates costing more FLOPs than this")
    parser.add_argument(
        "--candidates", type=Path, default=None, help="CSV of candidate runs: columns num_params, tokens, optional seeds and label"
    )
    parser.add_argument("--outcomes", type=positive_int, default=64, help="simulated outcomes per candidate (default 64)")
    parser.add_argument("--noise", action="store_true", help="plan for a measured checkpoint's interval (adds checkpoint noise)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated outcomes (default 0)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the PNG plot (default: current directory)")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")
    parser.set_defaults(func=run)


def _read_candidates(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"candidates file not found: {path}")
    try:
        return pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read candidates CSV {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``plan``; returns the exit status."""
    from ..inference import Fit
    from ..plan import next_run

    candidates = _read_candidates(args.candidates) if args.candidates is not None else None
    fit = Fit.load(args.fit)
    result = next_run(
        fit,
        args.family,
        candidates,
        target=(args.target_params, args.target_tokens),
        budget_flops=args.budget_flops,
        n_outcomes=args.outcomes,
        observation_noise=args.noise,
        seed=args.seed,
    )
    if args.format == "table":
        n, d = result.target
        print(f"family {args.family}: target N={n:.4g}, D={d:.4g}; pilot compute so far {result.existing_flops:.4g} FLOPs")
        print(f"{round(result.level * 100)}% interval of the target's loss now: {result.width_now:.4g} x its median")
        print("candidates, best expected width reduction per FLOP first (widths relative to the median):")
    write_table(result.table[COLUMNS], args.format)
    if args.format == "table" and result.table["ess_low"].any():
        print("ess_low: in over 10% of simulated outcomes few posterior draws keep weight; that expected width is optimistic (refit to check)")
    if not args.no_plots:
        from ..plots.decide import plan_widths
        from .decide import _save, _slug

        path = _save(plan_widths(result), args.out / f"plan_{_slug(args.family)}.png")
        if args.format == "table":
            print(f"plot: {path}")
    return 0
