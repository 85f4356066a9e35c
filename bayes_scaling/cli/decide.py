"""``bayes-scaling budget`` and ``bayes-scaling compare``: decisions from a saved fit.

    bayes-scaling budget FIT.nc --family F --flops C [--target-loss L --prob P]
    bayes-scaling compare FIT.nc --a F1 --b F2 (--params N --tokens D | --flops C) [--scales C1 C2 ...]

Both print a table and write PNG plots (isoFLOP bands, N* frontier, required budget;
P(A better) and relative difference vs scale).
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, ExtrapolationWarning
from ..inference import Fit
from ..outputs import atomic_path, require_writable_dir
from ..predict import KINDS, efolds_outside, extrapolation_note, family_draws

_FMT = "{:.4g}".format


def register(subparsers) -> None:
    """Add the ``budget`` and ``compare`` subcommands."""
    budget = subparsers.add_parser(
        "budget",
        help="compute-optimal N/D split, loss band and budget to reach a target loss",
        description="For a FLOP budget C (6ND): per-draw compute-optimal N*, D*, the loss band, the isoFLOP "
        "curve and robust choices of N; with --target-loss, P(loss <= target) at C and the smallest C reaching "
        "it with probability --prob.",
    )
    budget.add_argument("fit", type=Path, help="saved fit (NetCDF written by `bayes-scaling fit`)")
    budget.add_argument("--family", required=True, help="family of the fit to plan for")
    budget.add_argument("--flops", type=float, required=True, help="training budget C in FLOPs (C = 6ND), e.g. 1e22")
    budget.add_argument("--target-loss", type=float, default=None, help="target loss (the family's units, nats)")
    budget.add_argument("--prob", type=float, default=0.9, help="required P(loss <= target) (default 0.9)")
    budget.add_argument("--quantile", type=float, default=0.9, help="upper loss quantile minimised by the cautious choice of N (default 0.9)")
    budget.add_argument("--kind", choices=KINDS, default="new_run", help="prediction kind (default new_run: includes seed-to-seed spread)")
    _common(budget)
    budget.set_defaults(func=run, decide_command="budget")

    compare = subparsers.add_parser(
        "compare",
        help="P(family A beats family B) at a run size or a budget, and across scales",
        description="Compare two families (same metric and eval set!) at the same (N, D) or the same budget C "
        "(each at its own compute-optimal split): P(L_A < L_B), the relative difference, and where the ranking "
        "flips across scales. Families of one fit use joint posterior draws.",
    )
    compare.add_argument("fit", type=Path, help="saved fit holding family A (and B unless --fit-b)")
    compare.add_argument("--a", required=True, dest="family_a", metavar="F1", help="family A")
    compare.add_argument("--b", required=True, dest="family_b", metavar="F2", help="family B")
    compare.add_argument("--fit-b", type=Path, default=None, help="separate saved fit holding family B (independent draws)")
    compare.add_argument("--params", type=float, default=None, help="model size N (parameters) of the compared run")
    compare.add_argument("--tokens", type=float, default=None, help="training tokens D of the compared run")
    compare.add_argument("--flops", type=float, default=None, help="budget C in FLOPs (each family at its compute-optimal split)")
    compare.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        help="FLOP budgets to scan for the flip (with --params/--tokens the tokens-per-parameter ratio is kept); "
        "default 13 values from 1/1000x to 1000x the requested scale",
    )
    compare.add_argument("--kind", choices=KINDS, default="family", help="prediction kind (default family: the recipes' expected loss)")
    _common(compare)
    compare.set_defaults(func=run, decide_command="compare")


def _common(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed for run offsets and subsampling (default 0)")
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the PNG plots (default: current directory)")
    parser.add_argument("--no-plots", action="store_true", help="print the tables only")


def run(args: argparse.Namespace) -> int:
    """Run ``budget`` or ``compare``; returns the exit status."""
    if args.decide_command == "budget":
        return _run_budget(args)
    return _run_compare(args)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _band(row) -> str:
    return f"{_FMT(row['median'])} [{_FMT(row['q05'])}, {_FMT(row['q95'])}]"


def _positive(name: str, value) -> float:
    if value is None or not np.isfinite(value) or value <= 0:
        raise DataError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _save(ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.figure.tight_layout()
    try:
        with atomic_path(path) as tmp:
            ax.figure.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(ax.figure)
    return path


def _check_out(args) -> None:
    """Refuse an unwritable --out before loading and computing anything."""
    if not args.no_plots:
        require_writable_dir(args.out, "--out")


def _warn_far(efolds) -> None:
    note = extrapolation_note(efolds)
    if note:
        warnings.warn(note, ExtrapolationWarning, stacklevel=2)


def _run_budget(args) -> int:
    from .. import decide

    flops = _positive("--flops", args.flops)
    if args.target_loss is not None:
        _positive("--target-loss", args.target_loss)
    _check_out(args)
    fit = Fit.load(args.fit)
    draws = family_draws(fit, args.family, kind=args.kind, seed=args.seed)
    iso = decide.isoflop(draws, flops, quantile=args.quantile)
    alloc = iso.optimum.table
    print(f"family {args.family} ({args.kind} draws), budget C = {flops:.4g} FLOPs (6ND)")
    print("compute-optimal split per draw: median [5%, 95%]")
    for q, label in (("num_params", "N* (params)"), ("tokens", "D* (tokens)"), ("tokens_per_param", "D*/N*"), ("loss", "loss at optimum")):
        print(f"  {label:<17} {_band(alloc[alloc['quantity'] == q].iloc[0])}")
    print("choices of N on the isoFLOP line (loss over all draws at that N):")
    choices = iso.choices[["rule", "num_params", "tokens", "tokens_per_param", "median", "q05", "q95", "mean"]].copy()
    efolds = efolds_outside(draws, choices["num_params"], choices["tokens"])
    if efolds is not None:
        choices["efolds_outside"] = efolds  # how far beyond the training sizes and tokens
        _warn_far(efolds)
    print(choices.to_string(index=False, float_format=_FMT))
    budget = None
    if args.target_loss is not None:
        p_at = float((iso.optimum.draws["loss"] <= args.target_loss).mean())
        print(f"P(loss <= {args.target_loss:g}) at C = {flops:.4g} (compute-optimal split): {p_at:.3f}")
        budget = decide.budget_for_target(draws, args.target_loss, args.prob)
        t = budget.table
        print(f"smallest C with P(loss <= {args.target_loss:g}) >= {args.prob:g}: {budget.flops:.4g} FLOPs "
              f"({budget.flops / flops:.3g}x the budget); N* {_band(t[t['quantity'] == 'num_params'].iloc[0])}, "
              f"D* {_band(t[t['quantity'] == 'tokens'].iloc[0])}")
    if not args.no_plots:
        from ..plots import decide as plots

        stem = f"budget_{_slug(args.family)}"
        frontier = decide.compute_optimal(draws, np.geomspace(flops / 1e3, flops * 1e3, 13))
        written = [
            _save(plots.isoflop_bands(iso), args.out / f"{stem}_isoflop.png"),
            _save(plots.frontier(frontier), args.out / f"{stem}_frontier.png"),
        ]
        if budget is not None:
            written.append(_save(plots.required_flops(budget), args.out / f"{stem}_required_flops.png"))
        print("plots: " + ", ".join(str(p) for p in written))
    return 0


def _scan_points(args):
    """(point kwargs, scan kwargs) for decide.compare from the CLI arguments."""
    has_point = args.params is not None or args.tokens is not None
    if has_point == (args.flops is not None):
        raise DataError("give either --flops C, or --params N and --tokens D")
    scales = None if args.scales is None else np.asarray([_positive("--scales", s) for s in args.scales])
    if args.flops is not None:
        c = _positive("--flops", args.flops)
        scales = np.geomspace(c / 1e3, c * 1e3, 13) if scales is None else np.sort(scales)
        return {"flops": c}, {"flops": scales}
    if args.params is None or args.tokens is None:
        raise DataError("comparing at a run needs both --params N and --tokens D")
    n, d = _positive("--params", args.params), _positive("--tokens", args.tokens)
    c = 6.0 * n * d
    scales = np.geomspace(c / 1e3, c * 1e3, 13) if scales is None else np.sort(scales)
    ratio = d / n  # keep tokens per parameter: N D = C / 6, D / N = ratio
    return {"num_params": n, "tokens": d}, {"num_params": np.sqrt(scales / 6.0 / ratio), "tokens": np.sqrt(scales / 6.0 * ratio)}


def _run_compare(args) -> int:
    from .. import decide

    point, scan = _scan_points(args)
    if args.family_a == args.family_b and args.fit_b is None:
        raise DataError(f"--a and --b are the same family {args.family_a!r} of one fit; nothing to compare")
    _check_out(args)
    fit_a = Fit.load(args.fit)
    fit_b = Fit.load(args.fit_b) if args.fit_b is not None else fit_a
    # different seeds: a new run of A and a new run of B have independent run offsets
    draws_a = family_draws(fit_a, args.family_a, kind=args.kind, seed=args.seed)
    draws_b = family_draws(fit_b, args.family_b, kind=args.kind, seed=args.seed + 1)
    at = decide.compare(draws_a, draws_b, seed=args.seed, **point)
    across = decide.compare(draws_a, draws_b, seed=args.seed, **scan)
    a, b = args.family_a, args.family_b
    source = "joint draws of one fit" if args.fit_b is None else "independent draws of two fits"
    print(f"A = {a}, B = {b} ({args.kind} draws, {source}); losses must share metric and eval set")
    row = at.table.iloc[0]
    where = f"C = {row['flops']:.4g} FLOPs, each at its compute-optimal split" if "flops" in point else f"N = {row['num_params']:.4g}, D = {row['tokens']:.4g}"
    print(f"at {where}:")
    print(f"  P(A better) = {row['p_a_better']:.3f}   P(B better) = {row['p_b_better']:.3f}")
    print(f"  L_A/L_B - 1 = {_FMT(row['rel_diff_median'])} [{_FMT(row['rel_diff_q05'])}, {_FMT(row['rel_diff_q95'])}]   "
          f"median loss A {_FMT(row['loss_a_median'])}, B {_FMT(row['loss_b_median'])}")
    cols = [c for c in ("flops", "num_params", "tokens", "num_params_a", "num_params_b") if c in across.table]
    table = across.table[cols + ["p_a_better", "rel_diff_median", "rel_diff_q05", "rel_diff_q95"]].copy()
    for label, draws, col in (("a", draws_a, "num_params_a"), ("b", draws_b, "num_params_b")):
        n = table[col] if col in table else table["num_params"]
        d = table["tokens"] if "tokens" in table else table["flops"] / (6.0 * n)  # 6ND, as the budget split
        efolds = efolds_outside(draws, n, d)
        if efolds is not None:
            table[f"efolds_outside_{label}"] = efolds
            _warn_far(efolds)
    print("across scales:")
    print(table.to_string(index=False, float_format=_FMT))
    flip = across.flip.iloc[0]
    if flip["p_flip"] > 0:
        print(f"ranking flips within the scanned scales with probability {flip['p_flip']:.3f}; "
              f"flip at {flip['flip_flops_median']:.4g} FLOPs [{flip['flip_flops_q05']:.4g}, {flip['flip_flops_q95']:.4g}]")
    else:
        print("ranking does not flip within the scanned scales in any draw")
    if np.isfinite(flip["crossing_flops"]):
        print(f"P(A better) crosses 1/2 at {flip['crossing_flops']:.4g} FLOPs")
    if not args.no_plots:
        from ..plots import decide as plots

        stem = f"compare_{_slug(a)}_vs_{_slug(b)}"
        written = [
            _save(plots.p_a_better(across, label_a=a, label_b=b), args.out / f"{stem}_p_a_better.png"),
            _save(plots.rel_diff_bands(across, label_a=a, label_b=b), args.out / f"{stem}_rel_diff.png"),
        ]
        print("plots: " + ", ".join(str(p) for p in written))
    return 0


__all__ = ["register", "run"]
