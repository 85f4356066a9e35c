"""How far apart a fit's chains sit; shared by the mixing benchmarks."""

from __future__ import annotations

import numpy as np


def chain_spreads(values: np.ndarray) -> np.ndarray:
    """Per column of the last axis, the range of the chains' medians over the mean
    within-chain sd; ``values`` (chains, draws, k). Above ~2 some chains sit elsewhere than others."""
    within = values.std(axis=1).mean(axis=0)
    medians = np.median(values, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (medians.max(axis=0) - medians.min(axis=0)) / within


def chain_spread(values: np.ndarray) -> float:
    """The largest of :func:`chain_spreads`."""
    return float(np.max(chain_spreads(values)))


def mixing_aggregations() -> dict:
    """pandas named aggregations counting the unmixed fits of a table with columns
    ``max_rhat`` and ``chain_spread``: r-hat above 1.05 and 1.01, chains apart (spread > 2)."""
    return {
        "rhat_above_1_05": ("max_rhat", lambda r: int((r > 1.05).sum())),
        "rhat_above_1_01": ("max_rhat", lambda r: int((r > 1.01).sum())),
        "chains_apart": ("chain_spread", lambda s: int((s > 2).sum())),
    }
