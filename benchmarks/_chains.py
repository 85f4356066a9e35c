"""How far apart a fit's chains sit; shared by the mixing benchmarks."""

from __future__ import annotations

import numpy as np


def chain_spread(values: np.ndarray) -> float:
    """Largest, over the last axis, range of the chains' medians over the mean within-chain
    sd; ``values`` (chains, draws, k). Above ~2 some chains sit elsewhere than others."""
    within = values.std(axis=1).mean(axis=0)
    medians = np.median(values, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max((medians.max(axis=0) - medians.min(axis=0)) / within))
