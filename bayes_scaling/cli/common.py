"""Argument helpers shared by command modules."""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``counted(1, "family", "families")`` -> "1 family"; ``counted(7, "run")`` -> "7 runs"."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def acceptance(text: str) -> float:
    value = positive_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def add_sampler_args(parser: argparse.ArgumentParser, chains=4, warmup=500, draws=500, target_accept=0.95, default_note="") -> None:
    """``--chains --warmup --draws --target-accept --seed --no-progress``; a default of None
    means "the library's default for the path taken", explained by ``default_note``."""
    group = parser.add_argument_group("sampler", default_note or None)

    def shown(value):
        return "see above" if value is None else value

    group.add_argument("--chains", type=positive_int, default=chains, help=f"NUTS chains (default {shown(chains)})")
    group.add_argument("--warmup", type=int, default=warmup, help=f"warmup iterations per chain (default {shown(warmup)})")
    group.add_argument("--draws", type=positive_int, default=draws, help=f"kept draws per chain (default {shown(draws)})")
    group.add_argument(
        "--target-accept", type=acceptance, default=target_accept,
        help=f"NUTS target acceptance, in (0, 1); raise it (0.99) against divergences (default {shown(target_accept)})",
    )
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def write_table(df: pd.DataFrame, fmt: str, stream=None) -> None:
    """Print a DataFrame as an aligned table, CSV or JSON records (a missing value as null:
    JSON has no NaN, and strict readers refuse the bare ``NaN`` Python would write)."""
    stream = stream or sys.stdout
    if fmt == "csv":
        df.to_csv(stream, index=False)
    elif fmt == "json":
        records = df.astype(object).where(df.notna(), None).to_dict(orient="records")
        json.dump(records, stream, indent=2, default=float, allow_nan=False)
        stream.write("\n")
    else:
        stream.write(df.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\n")
