"""``population build`` and ``population show``: what a family borrows, as a file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..population import BUILD_DEFAULTS
from .common import positive_float, positive_int, write_table


def register(subparsers) -> None:
    parser = subparsers.add_parser("population", help="build or inspect a population prior (NetCDF)")
    commands = parser.add_subparsers(dest="population_command", required=True, metavar="SUBCOMMAND")

    build = commands.add_parser("build", help="fit each family of a runs table alone and save them as a population")
    build.add_argument("runs", type=Path, help="runs table (CSV, CSV.gz or Parquet); a 'source' column names source groups")
    build.add_argument("--out", type=Path, required=True, help="population file to write (NetCDF)")
    build.add_argument("--min-tokens", type=float, default=BUILD_DEFAULTS["min_tokens"], help=f"token cut (default {BUILD_DEFAULTS['min_tokens']:g})")
    build.add_argument(
        "--max-checkpoints",
        type=positive_int,
        default=BUILD_DEFAULTS["max_checkpoints"],
        help=f"log-spaced checkpoints kept per run (default {BUILD_DEFAULTS['max_checkpoints']})",
    )
    build.add_argument(
        "--min-sizes", type=positive_int, default=BUILD_DEFAULTS["min_sizes"], help=f"model sizes a member needs (default {BUILD_DEFAULTS['min_sizes']})"
    )
    build.add_argument(
        "--size-scale",
        type=positive_float,
        default=BUILD_DEFAULTS["size_scale"],
        help=f"prior scale of the size discrepancy (default {BUILD_DEFAULTS['size_scale']})",
    )
    build.add_argument("--families", nargs="+", default=None, help="only these families")
    build.add_argument("--chains", type=positive_int, default=BUILD_DEFAULTS["chains"], help=f"NUTS chains per family (default {BUILD_DEFAULTS['chains']})")
    build.add_argument("--warmup", type=positive_int, default=BUILD_DEFAULTS["warmup"], help=f"warmup per chain (default {BUILD_DEFAULTS['warmup']})")
    build.add_argument("--draws", type=positive_int, default=BUILD_DEFAULTS["draws"], help=f"draws per chain (default {BUILD_DEFAULTS['draws']})")
    build.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    build.add_argument("--workers", type=positive_int, default=1, help="worker processes for the family fits (default 1)")
    build.add_argument("--description", default="", help="where the runs came from (stored as provenance; default: the file name)")
    build.set_defaults(func=run_build)

    show = commands.add_parser("show", help="members, provenance and the prior of a population file")
    show.add_argument("population", help="population file, or 'public'")
    show.add_argument("--format", choices=("table", "csv", "json"), default="table")
    show.set_defaults(func=run_show)


def run_build(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ..distributed import ProcessExecutor
    from ..population import build

    start = time.perf_counter()

    def progress(family, seconds):
        print(f"  fitted {family} in {seconds:.0f} s ({time.perf_counter() - start:.0f} s so far)", file=sys.stderr)

    with ProcessExecutor(workers=args.workers) if args.workers > 1 else nullcontext() as executor:
        pop = build(
            args.runs,
            min_tokens=args.min_tokens,
            max_checkpoints=args.max_checkpoints,
            min_sizes=args.min_sizes,
            size_scale=args.size_scale,
            chains=args.chains,
            warmup=args.warmup,
            draws=args.draws,
            seed=args.seed,
            families=args.families,
            progress=progress,
            executor=executor,
            description=args.description,
        )
    path = pop.save(args.out)
    print(f"population of {len(pop.families)} families in {time.perf_counter() - start:.0f} s; wrote {path}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from ..population import resolve

    pop = resolve(args.population)
    write_table(pop.members, args.format)
    if args.format == "table":
        prior = pop.prior()
        print(f"\nprior of a new family: {prior.source}; Student-t with {prior.df:g} degrees of freedom")
        print("provenance: " + json.dumps(pop.provenance, sort_keys=True))
        print("settings: " + json.dumps(pop.settings, sort_keys=True))
    return 0
