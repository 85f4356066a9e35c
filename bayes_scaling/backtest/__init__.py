"""Back-test of scaling-law estimators with the protocol of "A Hitchhiker's Guide to
Scaling Law Estimation" (Choshen, Zhang, Andreas, ICML 2025, section 3.2).

A small package split by job, imports flowing down this list:

* :mod:`~bayes_scaling.backtest.protocol`: the cells (training points and targets of each
  family, k, fraction and token cut) and what the protocol leaves out;
* :mod:`~bayes_scaling.backtest.estimators`: the estimators, objects behind one interface
  in a registry by name;
* :mod:`~bayes_scaling.backtest.populations`: each scored family's population, without its
  source group;
* :mod:`~bayes_scaling.backtest.scoring`: scores per target, per family and aggregated;
* :mod:`~bayes_scaling.backtest.report`: the Markdown report and issue 17's bars;
* :mod:`~bayes_scaling.backtest.runner`: cells evaluated by an executor, rows handed to a
  sink as each cell finishes, and :func:`backtest`, the whole in one call.

Executors and sinks for other back-ends: :mod:`bayes_scaling.distributed`. Everything public
is importable from here (``from bayes_scaling import backtest as bt``).
"""

from .estimators import BAYES_ESTIMATORS, ESTIMATORS, Estimator, FittedCell, public_path_fit
from .populations import population_priors
from .protocol import (
    CELL_KEY_COLUMNS,
    FRACTIONS,
    MIN_SIZES,
    ROW_KEY_COLUMNS,
    Cell,
    CellData,
    Protocol,
    Target,
    primary_table,
    protocol_cells,
)
from .report import ARE_BAR, BASELINES, COVERAGE_BAR, bars, md_table, pct, summary_markdown
from .runner import (
    BAYES_SETTINGS,
    BacktestResult,
    LocalExecutor,
    backtest,
    build_cells,
    cell_seed,
    evaluate_cell,
    fan_data,
    run_cells,
)
from .scoring import (
    ARE_CAP,
    LEVELS,
    OBSERVED_COLUMNS,
    aggregate,
    chance_range,
    cluster_bootstrap,
    coverage_by_mixing,
    crps_from_draws,
    family_scores,
    pooled_coverage,
    score_target,
    scores_only,
)

__all__ = [
    "ARE_BAR",
    "ARE_CAP",
    "BASELINES",
    "BAYES_ESTIMATORS",
    "BAYES_SETTINGS",
    "BacktestResult",
    "CELL_KEY_COLUMNS",
    "COVERAGE_BAR",
    "Cell",
    "CellData",
    "ESTIMATORS",
    "Estimator",
    "FRACTIONS",
    "FittedCell",
    "LEVELS",
    "LocalExecutor",
    "MIN_SIZES",
    "OBSERVED_COLUMNS",
    "Protocol",
    "ROW_KEY_COLUMNS",
    "Target",
    "aggregate",
    "backtest",
    "bars",
    "build_cells",
    "cell_seed",
    "chance_range",
    "cluster_bootstrap",
    "coverage_by_mixing",
    "crps_from_draws",
    "evaluate_cell",
    "family_scores",
    "fan_data",
    "md_table",
    "pct",
    "pooled_coverage",
    "population_priors",
    "primary_table",
    "protocol_cells",
    "public_path_fit",
    "run_cells",
    "score_target",
    "scores_only",
    "summary_markdown",
]
