"""Benchmark: ingest a directory of 100 TensorBoard runs with 10,000 scalars each (bar: <= 30 s on 2 cores).

Writes ``--runs`` run directories of ``--scalars`` loss values each with tensorboard's own
``tensorboard.summary.Writer`` (0-d float tensors, the larger of the two scalar encodings,
71 bytes per event; ``--simple-value`` writes PyTorch/Megatron's ``simple_value`` events
instead), plus one non-loss tag logged every 10 steps. Then times, ``--repeats`` times each:

- the command, end to end, in a fresh process: ``bayes-scaling ingest DIR --map MAP --out
  runs.parquet`` (Python start, imports, reading, cleaning, validation, the Parquet write);
- in this process, :func:`bayes_scaling.io.ingest` alone and the reading alone (every run's
  event files decoded, no cleaning), to show where the time goes;
- for comparison, tensorboard's own ``EventFileLoader`` (without TensorFlow: a pure-Python
  record reader) over the first ``--compare-runs`` runs, scaled to all runs.

Writing the logs is not timed. ``--logs DIR`` keeps them (and reuses them when present)::

    python benchmarks/ingest.py [--runs 100] [--scalars 10000] [--repeats 3] [--out benchmarks/results/ingest.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bayes_scaling.outputs import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TOKENS_PER_STEP = 2**20
MAPPING = """family = "bench"
[loss]
tag = "train/loss"
[tokens]
per_step = 1048576
[runs."*"]
config = { layers = 12, width = 768, embeddings = false }
"""


def write_logs(directory: Path, n_runs: int, n_scalars: int, simple_value: bool, seed: int = 0) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from log_writers import chinchilla_loss, write_tensorboard

    rng = np.random.default_rng(seed)
    steps = np.arange(1, n_scalars + 1)
    for i in range(n_runs):
        loss = chinchilla_loss(1.25e8, steps * TOKENS_PER_STEP) * np.exp(rng.normal(0, 0.01, n_scalars))
        write_tensorboard(directory / f"run-{i:03d}", {"train/loss": (steps, loss), "lr": (steps[::10], np.full(len(steps[::10]), 3e-4))}, simple_value)


def read_with_tensorboard(paths) -> int:
    """Scalars of one run's event files through tensorboard's own loader (values decoded too)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    n = 0
    for path in paths:
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                float(tensor_util.make_ndarray(value.tensor))
                n += 1
    return n


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--scalars", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--simple-value", action="store_true", help="write simple_value events (PyTorch, Megatron) instead of tensors")
    parser.add_argument("--compare-runs", type=int, default=5, help="runs read with tensorboard's EventFileLoader for comparison")
    parser.add_argument("--logs", type=Path, default=None, help="keep the generated logs here (reused when present)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.md")
    args = parser.parse_args(argv)

    from bayes_scaling.io import ingest, mapping_from_dict, write_runs
    from bayes_scaling.io.ingest import discover

    with tempfile.TemporaryDirectory(prefix="bayes-scaling-ingest-bench-") as tmp:
        logs = args.logs or Path(tmp) / "logs"
        if not logs.is_dir():
            seconds, _ = timed(lambda: write_logs(logs, args.runs, args.scalars, args.simple_value))
            print(f"wrote {args.runs} runs x {args.scalars} scalars in {seconds:.0f} s", file=sys.stderr)
        size_mb = sum(f.stat().st_size for f in logs.rglob("*") if f.is_file()) / 1e6
        mapping_path = Path(tmp) / "map.toml"
        mapping_path.write_text(MAPPING)
        mapping = mapping_from_dict(__import__("tomllib").loads(MAPPING), str(mapping_path))
        out = Path(tmp) / "runs.parquet"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "bayes_scaling", "ingest", str(logs), "--map", str(mapping_path), "--out", str(out), "--format", "csv"]
        cli, library, reading = [], [], []
        for _ in range(args.repeats):
            seconds, proc = timed(lambda: subprocess.run(command, check=False, env=env, capture_output=True, text=True))
            if proc.returncode:
                raise SystemExit(proc.stderr)
            cli.append(seconds)
            seconds, _result = timed(lambda: write_runs(ingest([logs], mapping).table, out))
            library.append(seconds)
            seconds, _ = timed(lambda: [ref.load(frozenset({"train/loss"})) for ref in discover([logs])])
            reading.append(seconds)
        table = ingest([logs], mapping).table
        run_files = [sorted(str(p) for p in Path(ref.origin).iterdir()) for ref in discover([logs])[: args.compare_runs]]
        seconds, _ = timed(lambda: [read_with_tensorboard(paths) for paths in run_files])
        tensorboard_reader = seconds * args.runs / max(len(run_files), 1)
        summary = proc.stderr.strip().splitlines()[0]

    load = os.getloadavg()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# Ingest benchmark (issue 20)",
        "",
        (f"`python benchmarks/ingest.py --runs {args.runs} --scalars {args.scalars} --repeats {args.repeats}"
        f"{' --simple-value' if args.simple_value else ''}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."),
        "",
        (f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min; the machine is shared)."),
        (f"Input: {args.runs} TensorBoard runs x {args.scalars:,} loss scalars "
        f"({'simple_value events' if args.simple_value else '0-d tensor events from tensorboard.summary.Writer'}) "
        f"+ a learning-rate tag every 10 steps; {size_mb:.1f} MB of event files."),
        f"Output: {len(table):,} rows, {table['model'].nunique()} runs.",
        "",
        "| what | median s | all runs s |",
        "| --- | --- | --- |",
        f"| `bayes-scaling ingest` end to end (fresh process: start, imports, read, clean, validate, write Parquet) | **{statistics.median(cli):.1f}** | {', '.join(f'{s:.1f}' for s in cli)} |",
        f"| `io.ingest` + `write_runs` in process | {statistics.median(library):.1f} | {', '.join(f'{s:.1f}' for s in library)} |",
        f"| reading the event files alone | {statistics.median(reading):.1f} | {', '.join(f'{s:.1f}' for s in reading)} |",
        f"| for comparison: tensorboard's `EventFileLoader`, {args.compare_runs} runs scaled to {args.runs} | {tensorboard_reader:.1f} | one pass |",
        "",
        (f"Bar: <= 30 s on 2 cores: **{'met' if statistics.median(cli) <= 30 else 'NOT met'}** (median of the end-to-end command). "
        f"Peak memory of the benchmark process: {peak_mb:.0f} MB."),
        "",
        f"The command's summary line: `{summary}`",
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
