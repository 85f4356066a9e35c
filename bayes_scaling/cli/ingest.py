"""The ``ingest`` command: training logs -> a validated runs table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import write_table

#: Report columns printed per run (the full report is in IngestResult.report).
REPORT_COLUMNS = ["run", "family", "num_params", "rows", "tokens_min", "tokens_max", "restarts", "superseded", "non_finite", "spikes", "no_tokens"]


def register(subparsers) -> None:
    ingest = subparsers.add_parser(
        "ingest",
        help="read TensorBoard, W&B, Hugging Face Trainer and Megatron logs into a runs table",
        description=(
            "Read training logs into the runs table `fit` takes. SOURCE is a directory (TensorBoard event files, "
            "trainer_state.json files), a file (W&B history export or panel CSV, trainer_state.json, Megatron stdout log) "
            "or wandb://entity/project[/run_id]. The mapping file gives each run's family, parameter count, loss tag "
            "and unit, and tokens."
        ),
    )
    ingest.add_argument("sources", nargs="+", metavar="SOURCE", help="log directory, log file or wandb:// URL")
    ingest.add_argument("--map", type=Path, required=True, dest="mapping", metavar="MAP", help="mapping file (TOML)")
    ingest.add_argument("--out", type=Path, required=True, metavar="RUNS", help="runs table to write (.parquet, .csv or .csv.gz)")
    ingest.add_argument("--format", choices=("table", "csv", "json"), default="table", help="format of the per-run report")
    ingest.set_defaults(func=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    from ..io.ingest import check_output_path, ingest, write_runs
    from ..io.mapping import read_mapping

    check_output_path(args.out)
    mapping = read_mapping(args.mapping)
    result = ingest(args.sources, mapping)
    path = write_runs(result.table, args.out)
    write_table(result.report[REPORT_COLUMNS], args.format)
    print(f"ingest: {result.summary()}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0
