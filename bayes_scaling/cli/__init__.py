"""The ``bayes-scaling`` command line.

The only place that sets the JAX platform, the host device count and progress bars. Each
command lives in its own module with ``register(subparsers)`` (adds its parser, sets
``func``) and ``run(args) -> int``. Errors users can fix (DataError, SpecError, FitError,
bad arguments) exit with code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Command modules in ``bayes_scaling.cli``, in the order shown by ``--help``.
COMMAND_MODULES = ["core", "population", "diagnose", "decide", "plan", "backtest", "ingest"]


def configure_platform(platform: str, chains: int | None) -> None:
    """Select the JAX platform and give each chain a CPU device (before JAX initialises)."""
    import numpyro

    if platform != "auto":
        numpyro.set_platform(platform)
    if platform in ("auto", "cpu") and chains:
        numpyro.set_host_device_count(max(int(chains), os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayes-scaling",
        description="Bayesian scaling laws: predict LLM loss from smaller or partial runs, with uncertainty.",
    )
    parser.add_argument("--platform", choices=("auto", "cpu", "gpu"), default="auto", help="JAX platform (default: auto)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script; returns the exit code."""
    from ..errors import BayesScalingError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_platform(args.platform, getattr(args, "chains", None))
    try:
        return int(args.func(args) or 0)
    except BayesScalingError as exc:
        print(f"bayes-scaling {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"bayes-scaling {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
