"""The populations of ``bayes_hierarchical``: one per scored family, built without the family's
whole source group, so that nothing of its target (nor of its siblings', which share data,
code and units) reaches its own prior.
"""

from __future__ import annotations

from typing import Callable, Iterable

import pandas as pd

from .. import population as pop_mod
from .protocol import primary_table

__all__ = ["population_priors"]


def population_priors(
    runs,
    scored_families: Iterable[str],
    min_tokens: float,
    *,
    population=None,
    seed: int = 0,
    progress: Callable | None = None,
    executor=None,
    **build_settings,
) -> tuple[dict, pd.DataFrame]:
    """Populations of ``bayes_hierarchical``: one per scored family, without its source group.

    A family's population never holds the family itself nor any family of its source group
    (siblings share data, code and units, so they would leak what the held-out family's
    target looks like): :meth:`bayes_scaling.population.Population.without`.

    Parameters
    ----------
    runs : path or DataFrame
    scored_families : iterable of str
    min_tokens : float
        Token cut of the cells (a population built here uses it).
    population : "public", path or Population, optional
        An existing population (e.g. the shipped public one, built from this corpus at
        tokens >= 1e10); None builds one from ``runs`` with
        :func:`bayes_scaling.population.build` (``build_settings``, ``seed``, ``progress``,
        ``executor`` go to it).

    Returns
    -------
    priors : dict
        scored family -> :class:`~bayes_scaling.population.Population`.
    info : DataFrame
        The population's members (one row each) with ``min_tokens``.
    """
    table = primary_table(runs)
    if population is None:
        pop = pop_mod.build(table, min_tokens=min_tokens, seed=seed, executor=executor, progress=progress, **build_settings)
    else:
        pop = pop_mod.resolve(population)
    groups = pop_mod.source_groups(table)
    priors = {f: pop.without(groups=[groups.get(f, f)], families=[f]) for f in sorted(set(scored_families))}
    return priors, pop.members.assign(min_tokens=min_tokens)
