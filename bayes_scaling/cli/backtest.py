"""``bayes-scaling backtest``: the paper's back-test protocol on a runs table.

    bayes-scaling backtest RUNS --out DIR [--estimators ...] [--k ...] [--fractions ...]
                          [--min-tokens ...] [--bayes-fractions ...] [--bayes-k ...]

Writes ``DIR/backtest.csv`` (one row per family x target x k x fraction x cut x
estimator, written when every cell is done), ``DIR/cells/*.parquet`` (one file per finished
cell, written as it completes; a rerun with the same ``--out`` skips them, ``--restart``
discards them; a second run on the same ``--out`` is refused while the first lives, and a
resume is refused when the runs table's content or a setting changed; ``--executor process --num-cpus 2`` runs the cells in two worker processes,
``--executor ray [--address HOST:PORT]`` on Ray), ``DIR/backtest.md`` (summary) and, when
``bayes_hierarchical`` runs, ``DIR/backtest_population.csv``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..cellfit import SAMPLER_DEFAULTS
from ..convergence import MAX_R_HAT, MIN_ESS_PER_CHAIN, MIXED_RHAT
from ..population import BUILD_DEFAULTS
from ..distributed import (
    EXECUTORS,
    RAY_HINT,
    BatchedExecutor,
    OutputLock,
    ParquetSink,
    ProcessExecutor,
    ResumeExecutor,
    check_run_config,
    input_fingerprint,
    make_executor,
)
from ..errors import DataError
from .common import positive_int
from ..outputs import atomic_path, atomic_write_text, require_writable_dir


#: Settings that change a cell's numbers; a resumed run must use the same ones.
RESUME_SETTINGS = (
    "seed", "chains", "warmup", "draws", "retry_thinning", "tempering", "max_checkpoints", "batch_size",
    "population_warmup", "population_draws", "population_size_scale", "population_summary",
)


def add_executor_arguments(parser) -> None:
    """``--executor``, ``--address``, ``--num-cpus``, ``--batch-size`` and ``--restart`` of ``bayes-scaling backtest``."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help=f"where cells run: this process (local), --num-cpus worker processes (process) or Ray tasks (ray; needs {RAY_HINT})",
    )
    parser.add_argument("--address", default=None, metavar="HOST:PORT", help="Ray cluster to join (default: start a local Ray on 127.0.0.1)")
    parser.add_argument("--num-cpus", type=int, default=2, help="worker processes, or CPUs of the local Ray (default 2)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="fit bayes_independent cells in vectorised chunks of this many (one JAX program per chunk; 0: one by one); "
        "bayes_hierarchical cells are always fitted one by one, through bs.fit, the path users run",
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard finished cells in OUT/cells instead of resuming from them"
    )


class CliRun:
    """Executor, resumable sink, lock and progress of one ``bayes-scaling backtest`` call.

    Takes ``OUT/.lock`` (a second run on the same ``--out`` is refused while this one
    lives), checks settings and the runs table's content hash against ``OUT/cells/run.json``,
    sets damaged cell files aside (:attr:`damaged`) and resumes from the intact ones; all
    before anything in ``OUT`` is changed. Finished cells go to ``OUT/cells/*.parquet`` as
    they complete; cells already there are skipped. The progress bar counts only cells
    run now, so its rate and ETA are those of this run.
    """

    def __init__(self, args, out: Path):
        if args.executor != "ray" and args.address is not None:
            raise DataError("--address only applies to --executor ray")
        if args.num_cpus < 1:
            raise DataError("--num-cpus must be >= 1")
        if args.batch_size < 0:
            raise DataError("--batch-size must be >= 0")
        fingerprint = input_fingerprint(args.runs)
        out = require_writable_dir(out, "--out")
        self.lock = OutputLock(out).acquire()
        try:
            self._open(args, out, fingerprint)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, args, out: Path, fingerprint: str) -> None:
        from tqdm import tqdm

        cells_dir = out / "cells"
        if args.restart and cells_dir.exists():
            for p in [*cells_dir.glob("cell-*.parquet"), *cells_dir.glob("cell-*.parquet.damaged"), cells_dir / "run.json"]:
                p.unlink(missing_ok=True)
        config = {k: getattr(args, k, None) for k in RESUME_SETTINGS}
        config["runs_sha256"] = fingerprint
        check_run_config(cells_dir, config)
        self.parquet = ParquetSink(cells_dir)
        stored = self.parquet.stored()
        self.damaged = list(self.parquet.damaged)
        self.n_stored = len(stored)
        inner = make_executor(args.executor, address=args.address, num_cpus=args.num_cpus)
        if args.batch_size:
            inner = BatchedExecutor(inner, batch_size=args.batch_size)
        self.executor = ResumeExecutor(inner, stored)
        self.bar = tqdm(total=0, desc="cells", unit="cell", disable=args.no_progress)

    def sink(self, rows: list[dict]) -> None:
        self.parquet(rows)

    def on_cells(self, cells) -> None:
        done = sum(1 for c in cells if self.executor.is_stored(c))
        self.bar.reset(total=len(cells) - done)
        if done:
            self.bar.set_postfix_str(f"{done} resumed from cells/")

    def progress(self, cell) -> None:
        if not self.executor.is_stored(cell):
            self.bar.update()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        try:
            inner = self.executor.inner
            while inner is not None and not hasattr(inner, "close"):  # e.g. a BatchedExecutor's pool
                inner = getattr(inner, "inner", None)
            if isinstance(inner, ProcessExecutor):
                inner.close(terminate=interrupted)
            elif inner is not None:
                inner.close()
        finally:
            self.bar.close()
            self.lock.release()


def register(subparsers) -> None:
    """Add the ``backtest`` subcommand."""
    p = subparsers.add_parser(
        "backtest",
        help="back-test estimators with the paper's protocol (ARE, interval coverage)",
        description="Hold out the largest model of each family (last 30%% of training), fit on the k smallest "
        "sizes, and score ARE and interval coverage of each estimator on the same cells.",
    )
    p.add_argument("runs", type=Path, help="runs table (CSV, CSV.gz or Parquet)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--estimators",
        nargs="+",
        default=["classic", "classic_huber", "bayes_independent", "bayes_hierarchical"],
        metavar="NAME",
        help="classic, classic_huber, bayes_independent, bayes_hierarchical (default: all)",
    )
    p.add_argument("--k", type=int, nargs="+", default=None, help="numbers of smallest sizes to train on (default: all)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 1.0], help="fractions of training kept")
    p.add_argument("--min-tokens", type=float, nargs="+", default=[1e10], help="token cut(s) on training checkpoints (default 1e10)")
    p.add_argument("--max-checkpoints", type=int, default=30, help="thin each training run to this many checkpoints (0: keep all)")
    p.add_argument("--families", nargs="+", default=None, help="restrict to these families")
    p.add_argument("--bayes-fractions", type=float, nargs="+", default=None, help="fractions for the Bayesian estimators (default: all)")
    p.add_argument("--bayes-k", type=int, nargs="+", default=None, help="k values for the Bayesian estimators (default: all)")
    p.add_argument("--chains", type=int, default=SAMPLER_DEFAULTS["chains"], help=f"NUTS chains per Bayesian cell (default {SAMPLER_DEFAULTS['chains']})")
    p.add_argument("--warmup", type=int, default=SAMPLER_DEFAULTS["warmup"], help=f"NUTS warmup per chain of each Bayesian cell (default {SAMPLER_DEFAULTS['warmup']})")
    p.add_argument("--draws", type=int, default=SAMPLER_DEFAULTS["draws"], help=f"NUTS draws per chain of each Bayesian cell (default {SAMPLER_DEFAULTS['draws']})")
    p.add_argument(
        "--retry-thinning", type=positive_int, default=SAMPLER_DEFAULTS["retry_thinning"],
        help=f"a Bayesian cell whose fit has r_hat > {MAX_R_HAT} or ESS < {MIN_ESS_PER_CHAIN} per chain has its chains carried on to K times the iterations, every K-th draw kept "
        f"(1: never; default {SAMPLER_DEFAULTS['retry_thinning']})",
    )
    p.add_argument(
        "--tempering", action="store_true",
        help=f"a Bayesian cell whose fit has r_hat > {MIXED_RHAT} is fitted again as a replica exchange instead (what `fit --tempering` does)",
    )
    p.add_argument(
        "--population",
        default=None,
        help="population of bayes_hierarchical: 'public' (shipped, built from the shared corpus at tokens >= 1e10) or a "
        "file from 'bayes-scaling population build'; each family's prior leaves out its source group. "
        "Default: build one from RUNS per token cut",
    )
    p.add_argument("--population-warmup", type=int, default=BUILD_DEFAULTS["warmup"], help=f"NUTS warmup per chain of each population member's fit (default {BUILD_DEFAULTS['warmup']})")
    p.add_argument("--population-draws", type=int, default=BUILD_DEFAULTS["draws"], help=f"NUTS draws per chain of each population member's fit (default {BUILD_DEFAULTS['draws']})")
    p.add_argument(
        "--population-size-scale",
        type=float,
        default=BUILD_DEFAULTS["size_scale"],
        help="half-normal scale of each population member's size discrepancy (sd of log loss per e-fold of "
        f"model size; bayes_hierarchical predictions widen with the distance they extrapolate) (default {BUILD_DEFAULTS['size_scale']})",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_executor_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import backtest as bt
    from ..backtest.estimators import resolve

    resolve(args.estimators)  # a DataError naming the unknown ones, before anything is written
    for name in ("chains", "draws", "population_draws"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1")
    if not args.population_size_scale > 0:
        raise DataError("--population-size-scale must be > 0")
    out = args.out
    # nothing in OUT changes before CliRun has taken the lock and accepted the resume
    with warnings.catch_warnings(), CliRun(args, out) as cli_run:
        warnings.simplefilter("ignore")
        if cli_run.damaged:
            cli_run.bar.write(f"{len(cli_run.damaged)} damaged cell file(s) set aside as *.damaged in {out / 'cells'}; refitting them", file=sys.stderr)
        result = bt.backtest(
            args.runs,
            estimators=args.estimators,
            ks=args.k,
            fractions=args.fractions,
            min_tokens=args.min_tokens,
            max_checkpoints=args.max_checkpoints or None,
            families=args.families,
            bayes_fractions=args.bayes_fractions,
            bayes_ks=args.bayes_k,
            bayes_settings={"chains": args.chains, "warmup": args.warmup, "draws": args.draws, "retry_thinning": args.retry_thinning, "tempering": args.tempering},
            population=args.population,
            population_settings={
                "warmup": args.population_warmup,
                "draws": args.population_draws,
                "size_scale": args.population_size_scale,
            },
            seed=args.seed,
            executor=cli_run.executor,
            sink=cli_run.sink,
            progress=cli_run.progress,
            on_cells=cli_run.on_cells,
        )
        cli_run.bar.close()
        # written whole at the end (the cells were saved as they finished): a refused or
        # killed run leaves the previous backtest.csv as it was
        with atomic_path(out / "backtest.csv") as tmp:
            result.results.sort_values(list(bt.ROW_KEY_COLUMNS), kind="stable").to_csv(tmp, index=False)
        if len(result.population_info):
            with atomic_path(out / "backtest_population.csv") as tmp:
                result.population_info.to_csv(tmp, index=False)
        meta = {
            "runs": str(args.runs),
            "estimators": " ".join(args.estimators),
            "k": args.k or "all",
            "fractions": args.fractions,
            "min_tokens": args.min_tokens,
            "Bayesian sampler": f"chains={args.chains}, warmup={args.warmup}, draws={args.draws}, retry_thinning={args.retry_thinning}, tempering={args.tempering}; "
            + (f"population {args.population} (each family without its source group)" if args.population else
               f"population built per cut: member fits warmup={args.population_warmup}, draws={args.population_draws}, size scale={args.population_size_scale}"),
            "seed": args.seed,
        }
        atomic_write_text(out / "backtest.md", result.summary(meta))
    print(f"wrote {out / 'backtest.csv'} ({len(result.results)} rows) and {out / 'backtest.md'}")
    return 0
