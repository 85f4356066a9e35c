"""Back-test of "which run to train next" (issue 21): information per FLOP against two ladders.

    python benchmarks/next_run.py [--runs ../shared/data/runs.csv.gz] [--out benchmarks/results] [--work DIR]
    python benchmarks/next_run.py --report-only

Families of the shared corpus with at least 5 model sizes at the 1e10 token cut; the largest
size is the target (its run with the most tokens; scored on the last 30% of that run, as in
the back-test). Pilot candidates are the family's real sizes below it (at most 7, log-spaced
from the smallest, so that every strategy takes few steps): one candidate = every run of
that size, at its real checkpoints (tokens >= 1e10, thinned to 8 log-spaced per run), costing
6 N D summed over its runs. Every strategy starts from the smallest size and adds one size
per step, refitting the family with the single-family cell model under its population prior
built without the family's source group (``backtest.population_priors``, ``cellfit.fit_cell``: the back-test's
``bayes_hierarchical``):

``next_size_up``    the smallest size not yet trained, until all are; its total compute C is
                    the budget of the others;
``largest``         the largest size whose cost fits in what is left of C;
``information``     the size with the largest expected shrinkage of the target's 90% interval
                    per FLOP (``plan.next_run`` on the current posterior), among those that fit.

Each state is scored on the target: ARE, 90% interval width (relative to the observed loss)
and coverage, as ``backtest.score_target`` scores a cell. Every transition also checks the
importance re-weighting behind ``next_run`` against the real refit: the width after
re-weighting the previous posterior's draws by the added size's real data, against the
width from the refit (both from the same mixture formula).

Rows are written to ``next_run.csv`` as they come (temp file + rename); a rerun skips the
families already finished (resumable). ``--report-only`` rebuilds ``next_run.md`` and
``next_run_width_vs_compute.png`` from the CSV.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import json
import pickle
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayes_scaling import plan
from bayes_scaling.data import late_window, loss_rise, thin_log_spaced
from bayes_scaling.laws import centre
from bayes_scaling.outputs import atomic_path, atomic_write_text

HERE = Path(__file__).resolve().parent
STRATEGIES = ("next_size_up", "largest", "information")
MIN_TOKENS = 1e10
MIN_SIZES = 5
MAX_PILOT_SIZES = 7
MAX_CHECKPOINTS = 8
MAX_RUNS = 64  # the cell model's run bucket; larger families would need a bigger compile
N_OUTCOMES = 48
COMPUTE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: Cell and population fits of every state (``--chains``, ``--warmup``, ``--draws``).
DEFAULT_SETTINGS = {"chains": 2, "warmup": 500, "draws": 500}
DEFAULT_RUNS = HERE.parent / ".." / "shared" / "data" / "runs.csv.gz"
#: Where the population priors are cached between runs (``--work``).
DEFAULT_WORK = Path(tempfile.gettempdir()) / "bayes_scaling_next_run"
BAR_RATIO = 0.6


# --------------------------------------------------------------------------- the back-test's machinery
# Everything this script takes from backtest / cellfit is in this block (they are being reworked).


def backtest_tools():
    from bayes_scaling import backtest as bt
    from bayes_scaling.cellfit import fit_cell

    return bt, fit_cell


def load_table(runs_path):
    bt, _ = backtest_tools()
    return bt.primary_table(runs_path)


def population(runs_path, families, settings, seed, progress):
    """Leave-one-family-out population prior of each family (dict family -> CellPrior)."""
    bt, _ = backtest_tools()
    priors, info = bt.population_priors(
        runs_path, families, MIN_TOKENS, chains=settings["chains"], warmup=settings["warmup"], draws=settings["draws"], seed=seed,
        progress=lambda family, seconds: progress(family),
    )
    return {f: pop.prior() for f, pop in priors.items()}, info


def cached_priors(runs_path, families, settings, seed, work: Path):
    """:func:`population`, pickled under ``work`` and read back on a rerun with the same settings.

    Returns (priors, info); info (the members' table) is None when the priors were read back.
    """
    path = work / f"priors_seed{seed}_{settings['chains']}x{settings['warmup']}+{settings['draws']}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes()), None
    log("population fits ...")
    priors, info = population(runs_path, families, settings, seed, progress=lambda f: log(f"population fit {f}"))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(pickle.dumps(priors))
    return priors, info


def refit(data, prior, settings, seed):
    """Cell posterior of a family's training data ``(x_n, x_d, run_idx, log_loss)``."""
    _, fit_cell = backtest_tools()
    return fit_cell(*data, prior, seed=seed, chains=settings["chains"], warmup=settings["warmup"], draws=settings["draws"],
                    target_accept=0.9, max_tree_depth=8)


def score(target_tokens, target_loss, target_params, post, seed):
    """Backtest scores of the cell posterior's new-run predictive at the target checkpoints."""
    bt, _ = backtest_tools()
    tn, td = centre(np.full_like(target_tokens, target_params), target_tokens)
    draws = post.predict_new_run(tn, td, seed=seed)
    return bt.score_target(target_loss, np.median(draws, axis=0), draws)


def chance_range(n_families):
    """(low, high) 90% coverage an exactly calibrated interval shows over n families by chance."""
    bt, _ = backtest_tools()
    return bt.chance_range(n_families)


def state_seed(family, sizes, seed):
    bt, _ = backtest_tools()
    return bt.cell_seed((MIN_TOKENS, family, tuple(sorted(float(s) for s in sizes))), seed)


def target_run(family_table):
    """(model, num_params, tokens, loss) of the target: the largest size's longest non-diverged run."""
    bt, _ = backtest_tools()
    largest = family_table["num_params"].max()
    best = None
    for model, run in family_table[family_table["num_params"] == largest].groupby("model", sort=True):
        tok, loss = late_window(run["tokens"], run["loss"])
        if loss_rise(loss)[0]:
            continue
        if best is None or tok.max() > best[2].max():
            best = (str(model), float(largest), tok, loss)
    return best


# --------------------------------------------------------------------------- families and candidates


def family_setup(table, family):
    """Pilot sizes (<= MAX_PILOT_SIZES, log-spaced from the smallest), their runs and costs, and the target."""
    g_all = table[table["family"] == family]
    target = target_run(g_all)
    if target is None:
        return None
    g = g_all[(g_all["tokens"] >= MIN_TOKENS) & (g_all["num_params"] < target[1])]
    sizes = np.sort(g["num_params"].unique())
    if len(sizes) + 1 < MIN_SIZES:
        return None
    pick = np.unique(np.round(np.geomspace(1, len(sizes), MAX_PILOT_SIZES)).astype(int) - 1) if len(sizes) > MAX_PILOT_SIZES else np.arange(len(sizes))
    sizes = sizes[pick]
    runs = {}
    for size in sizes:
        parts = []
        for model, run in g[g["num_params"] == size].groupby("model", sort=True):
            run = run.sort_values("tokens")
            full = g_all[g_all["model"] == model]["tokens"].max()  # compute counts the whole run
            run = run.iloc[np.sort(thin_log_spaced(run["tokens"].to_numpy(), MAX_CHECKPOINTS))]
            parts.append((str(model), float(size), run["tokens"].to_numpy(float), run["loss"].to_numpy(float), float(full)))
        runs[float(size)] = parts
    n_runs = sum(len(v) for v in runs.values())
    if n_runs > MAX_RUNS:
        return None
    cost = {s: float(sum(6.0 * s * full for *_, full in parts)) for s, parts in runs.items()}
    return {"sizes": [float(s) for s in sizes], "runs": runs, "cost": cost, "target": target, "n_runs": n_runs}


def cell_data(setup, sizes):
    parts = [p for s in sorted(sizes) for p in setup["runs"][s]]
    x_n = np.concatenate([np.full(len(tok), np.log(n / 1e9)) for _, n, tok, _, _ in parts])
    x_d = np.concatenate([np.log(tok / 1e11) for _, _, tok, _, _ in parts])
    run_idx = np.concatenate([np.full(len(tok), i) for i, (_, _, tok, _, _) in enumerate(parts)])
    log_loss = np.concatenate([np.log(loss) for _, _, _, loss, _ in parts])
    existing = pd.DataFrame({"num_params": [n for _, n, *_ in parts], "tokens": [full for *_, full in parts]})
    return (x_n, x_d, run_idx, log_loss), existing


def sizes_label(sizes) -> str:
    """How a set of sizes is written in the CSV (column ``sizes``)."""
    return " ".join(f"{s:.4g}" for s in sorted(sizes))


def candidate(setup, size):
    return plan.Candidate(f"N={size:.3g}", tuple((n, tok) for _, n, tok, _, _ in setup["runs"][size]))


# --------------------------------------------------------------------------- the back-test


def fit_state(family, setup, prior, settings, seed, sizes):
    """One state: the family refitted on ``sizes``; (cell posterior, plan draws, seconds, target scores)."""
    _, target_params, target_tokens, target_loss = setup["target"]
    data, existing = cell_data(setup, sizes)
    start = time.perf_counter()
    post = refit(data, prior, settings, state_seed(family, sizes, seed))
    seconds = time.perf_counter() - start
    draws = plan.draws_from_cell(post, existing)
    return post, draws, seconds, score(target_tokens, target_loss, target_params, post, state_seed(family, sizes, seed) + 1)


def ladder_total(setup):
    """Compute of the whole next-size-up ladder, smallest size included (what a share is of)."""
    return float(sum(setup["cost"].values()))


def run_family(family, setup, prior, settings, seed, emit, log):
    fits = {}
    target_model, target_params, target_tokens, target_loss = setup["target"]
    plan_target = (target_params, float(target_tokens.max()))
    budget = ladder_total(setup) - setup["cost"][setup["sizes"][0]]

    def state(sizes):
        key = frozenset(sizes)
        if key not in fits:
            fits[key] = fit_state(family, setup, prior, settings, seed, sizes)
            post, seconds = fits[key][0], fits[key][2]
            log(f"{family}: fit {len(sizes)} sizes in {seconds:.1f} s (rhat {post.max_rhat:.3f}, div {post.divergences})")
        return fits[key]

    start_sizes = [setup["sizes"][0]]
    for strategy in STRATEGIES:
        sizes = list(start_sizes)
        spent = 0.0
        step = 0
        transition = {}  # how the last step's size was chosen and what re-weighting said of it
        while True:
            post, draws, seconds, scores = state(sizes)
            width_plan = float(plan.target_width(draws, *plan_target, observation_noise=True))
            row = {
                "family": family, "strategy": strategy, "step": step, "sizes": sizes_label(sizes),
                "added": "" if step == 0 else f"{sizes[-1]:.4g}", "pilot_flops": spent, "budget_flops": budget,
                "base_flops": setup["cost"][setup["sizes"][0]], "n_sizes_total": len(setup["sizes"]) + 1,
                "target": target_model, "target_params": target_params, "width_plan": width_plan,
                "divergences": post.divergences, "max_rhat": post.max_rhat, "fit_seconds": seconds, **scores,
            }
            row.update(transition)
            remaining = [s for s in setup["sizes"] if s not in sizes and setup["cost"][s] <= budget - spent + 1e-6 * budget]
            if not remaining:
                row["last"] = True
                emit(row)
                break
            row["last"] = False
            emit(row)
            if strategy == "next_size_up":
                choice, planned = min(remaining), {}
            elif strategy == "largest":
                choice, planned = max(remaining), {}
            else:
                result = plan.next_run(draws, candidates=[candidate(setup, s) for s in remaining], target=plan_target,
                                       n_outcomes=N_OUTCOMES, observation_noise=True, seed=seed)
                best = result.table.iloc[0]
                choice = float(best["num_params"])
                planned = {"planned_width": float(best["expected_width"]), "planned_ess": float(best["ess_mean"]),
                           "planned_width_now": result.width_now}
            # the importance re-weighting of next_run, given the real data of the chosen size
            added = [(n, tok, loss) for _, n, tok, loss, _ in setup["runs"][choice]]
            weights = plan.observed_weights(draws, added)
            anchor = plan.anchor_after(draws, choice)
            transition = {**planned, "is_width": float(plan.target_width(draws, *plan_target, weights, anchor=anchor, observation_noise=True)),
                          "is_ess": float(plan.effective_sample_size(weights))}
            sizes = sizes + [choice]
            spent += setup["cost"][choice]
            step += 1


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_write_csv(df, path):
    bt, _ = backtest_tools()
    with atomic_path(path) as tmp:
        bt.scores_only(df).to_csv(tmp, index=False)  # the corpus's losses stay out of the repository


# --------------------------------------------------------------------------- report


def matched_ratio(g, strategy):
    """Compute (as a share of next_size_up's) at which ``strategy`` first reaches its final width."""
    ns = g[g["strategy"] == "next_size_up"].sort_values("step")
    s = g[g["strategy"] == strategy].sort_values("step")
    if ns.empty or s.empty or not ns["last"].iloc[-1] or not s["last"].iloc[-1]:
        return np.nan
    goal, total = ns["width_90"].iloc[-1], ns["pilot_flops"].iloc[-1] + ns["base_flops"].iloc[-1]
    reached = s[s["width_90"] <= goal * (1 + 1e-9)]
    if reached.empty:
        return np.inf
    return float((reached["pilot_flops"].iloc[0] + reached["base_flops"].iloc[0]) / total)


def at_fraction(s, fraction):
    """The state a strategy is in once ``fraction`` of the next-size-up budget is spent."""
    s = s.sort_values("step")
    total = s["budget_flops"].iloc[0]
    ok = s[s["pilot_flops"] <= fraction * total * (1 + 1e-9)]
    return ok.iloc[-1]


def md_table(df: pd.DataFrame, index: bool = False) -> str:
    df = df.reset_index() if index else df

    def cell(v):
        return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def bootstrap_median(values, seed=0, n=4000, level=0.9):
    values = np.asarray(values, float)
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(values, (n, len(values))), axis=1)
    return float(np.median(values)), float(np.quantile(meds, (1 - level) / 2)), float(np.quantile(meds, (1 + level) / 2))


def report(results: pd.DataFrame, meta: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = results.groupby("family").apply(lambda g: set(g.loc[g["last"].astype(bool), "strategy"]) >= set(STRATEGIES))
    done = sorted(finished[finished].index)
    partial = meta.get("partial", False) or len(done) < meta.get("n_families", len(done))
    res = results[results["family"].isin(done)].copy()
    lines = ["# Which run to train next: back-test of information per FLOP", ""]
    if partial:
        lines += [f"**PARTIAL RESULTS**: {len(done)} of {meta.get('n_families', '?')} families finished when this was written.", ""]
    lines += ["Script: `benchmarks/next_run.py` (see its docstring for the protocol). Settings:", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in ("partial",)]
    lines += ["", f"Families finished: {', '.join(done) or 'none'}.", ""]
    if not done:
        return "\n".join(lines)
    ratios = {s: {f: matched_ratio(g, s) for f, g in res.groupby("family")} for s in ("information", "largest")}
    rows = []
    for f, g in res.groupby("family"):
        ns = g[g["strategy"] == "next_size_up"].sort_values("step")
        rows.append({"family": f, "pilot sizes": len(ns), "next_size_up final width_90": ns["width_90"].iloc[-1],
                     "information: compute share to reach it": ratios["information"][f],
                     "largest: compute share to reach it": ratios["largest"][f],
                     "information order (N)": " -> ".join(f"{float(a):.3g}" for a in g[(g["strategy"] == "information") & (g["step"] > 0)].sort_values("step")["added"])})
    per_family = pd.DataFrame(rows)
    lines += ["## The bar: compute to reach next-size-up's final interval width", "",
              ("Share of the next-size-up ladder's total pilot compute (smallest size included) at which a strategy's "
              "90% interval at the target is first at most as wide as next-size-up's at the end (inf: never)."), "",
              md_table(per_family), ""]
    medians = {}
    for s in ("information", "largest"):
        vals = np.array([v for v in ratios[s].values() if np.isfinite(v) or v == np.inf])
        med, lo, hi = bootstrap_median(np.where(np.isinf(vals), 10.0, vals))
        medians[s] = med
        lines.append(f"- **{s}**: median share {med:.2f} (90% bootstrap interval over families {lo:.2f}-{hi:.2f}; never "
                     f"reached = counted as 10), {int((vals <= BAR_RATIO).sum())} of {len(vals)} families at or below {BAR_RATIO}.")
    final = res[(res["strategy"] == "information")]
    coverage, n_fam = final["cov_90"].mean(), final["family"].nunique()
    chance_lo, chance_hi = chance_range(n_fam)
    fast, held = medians["information"] <= BAR_RATIO, coverage >= chance_lo
    lines += ["", (f"**Bar (information reaches the final width with at most {BAR_RATIO:.0%} of the compute on the median "
              f"family, 90% coverage held): {'met' if fast and held else 'NOT met'}** "
              f"(median share {medians['information']:.2f}: {'within' if fast else 'above'} {BAR_RATIO}; 90% coverage over all "
              f"information states {coverage:.0%}, {'inside or above' if held else 'below'} the chance range of a calibrated "
              f"interval for {n_fam} families, {chance_lo:.0%}-{chance_hi:.0%})."), ""]
    lines += [("Reading: the ranking is per FLOP and greedy (one step ahead), so it favours cheap sizes whose "
              "width reduction per FLOP is high; all three strategies end in the same state (every pilot size), so a "
              "share of 1 means a strategy reached next-size-up's final width only at the end. A narrow interval "
              "reached early is worth only as much as its coverage (below). Chains that settle in different modes "
              "(max r_hat > 1.05, counted below) make single states noisy: a width can rise after a run is added."), ""]
    # equal compute
    eq = []
    for fraction in COMPUTE_FRACTIONS:
        for s in STRATEGIES:
            states = pd.DataFrame([at_fraction(g[g["strategy"] == s], fraction) for _, g in res.groupby("family")])
            eq.append({"compute share": fraction, "strategy": s, "median ARE %": 100 * states["are"].median(),
                       "median width_90 %": 100 * states["width_90"].median(), "coverage_90 %": 100 * states["cov_90"].mean(),
                       "coverage_50 %": 100 * states["cov_50"].mean(), "families": len(states)})
    lines += ["## At equal pilot compute", "",
              ("State of each strategy once the given share of the next-size-up budget is spent (pilot compute beyond the "
              "smallest size); median over families of ARE and of the 90% width (relative to the observed loss), mean "
              "coverage of the target's checkpoints."), "", md_table(pd.DataFrame(eq)), ""]
    cov = res.groupby("strategy").agg(states=("cov_90", "size"), coverage_90=("cov_90", "mean"), coverage_50=("cov_50", "mean"),
                                      max_rhat_over_1_05=("max_rhat", lambda r: int((r > 1.05).sum())))
    lines += ["Coverage over every state of each strategy (all steps, all families):", "", md_table(cov, index=True), ""]
    # importance re-weighting vs refit
    tr = res[res["step"] > 0].copy()
    tr["is_over_refit"] = tr["is_width"] / tr["width_plan"]
    tr["ess_bin"] = pd.cut(tr["is_ess"], [0, 10, 30, 100, np.inf], labels=["< 10", "10-30", "30-100", ">= 100"])
    acc = tr.groupby("ess_bin", observed=True)["is_over_refit"].describe(percentiles=[0.1, 0.5, 0.9])[["count", "10%", "50%", "90%"]]
    info = tr[tr["strategy"] == "information"].dropna(subset=["planned_width"])
    lines += ["## Importance re-weighting against a real refit", "",
              ("Each transition re-weights the previous posterior's draws by the added size's real data (what "
              "`plan.next_run` does with simulated data) and compares the target's 90% width (mixture formula, with "
              "noise) with the width from the real refit (same formula on the new draws). Ratio re-weighted / refit by "
              "the re-weighting's effective sample size:"), "", md_table(acc, index=True), ""]
    if len(info):
        lines += [(f"Information steps: the width `next_run` expected for its choice (mean over {N_OUTCOMES} simulated "
                  f"outcomes) over the refit's width: median {np.median(info['planned_width'] / info['width_plan']):.2f} "
                  f"(10-90%: {np.quantile(info['planned_width'] / info['width_plan'], 0.1):.2f}-"
                  f"{np.quantile(info['planned_width'] / info['width_plan'], 0.9):.2f}, {len(info)} steps); expected ESS "
                  f"median {info['planned_ess'].median():.0f}."), ""]
    # figure
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = {"next_size_up": "tab:gray", "largest": "tab:orange", "information": "tab:blue"}
    grid = np.linspace(0, 1, 41)
    for s in STRATEGIES:
        curves = []
        for f, g in res.groupby("family"):
            t = g[g["strategy"] == s].sort_values("step")
            x = t["pilot_flops"].to_numpy() / t["budget_flops"].iloc[0]
            w = t["width_90"].to_numpy() / g[(g["strategy"] == s) & (g["step"] == 0)]["width_90"].iloc[0]
            ax.step(x, w, where="post", color=colors[s], alpha=0.15, lw=0.8)
            curves.append(w[np.searchsorted(x - 1e-9, grid, side="right") - 1])  # spent sums differ in the last bits
        ax.step(grid, np.median(curves, axis=0), where="post", color=colors[s], lw=2.2, label=f"{s} (median)")
    ax.set_yscale("log")
    ax.set_xlabel("pilot compute beyond the smallest size / next-size-up's total")
    ax.set_ylabel("90% width at target / width from smallest size")
    ax.set_title(f"{len(done)} families, target = largest size", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "next_run_width_vs_compute.png", dpi=120)
    plt.close(fig)
    lines += [("Figure: `next_run_width_vs_compute.png` (width at the target relative to its width from the smallest "
              "size, against pilot compute; thin lines families, thick medians)."), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(DEFAULT_RUNS))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--work", default=None, help="directory for the cached population priors (default: a temp dir)")
    parser.add_argument("--families", nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=DEFAULT_SETTINGS["chains"])
    parser.add_argument("--warmup", type=int, default=DEFAULT_SETTINGS["warmup"])
    parser.add_argument("--draws", type=int, default=DEFAULT_SETTINGS["draws"])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, meta_path = out / "next_run.csv", out / "next_run_meta.json"
    settings = {"chains": args.chains, "warmup": args.warmup, "draws": args.draws}


    if args.report_only:
        results = pd.read_csv(csv_path)
        meta = json.loads(meta_path.read_text())
        atomic_write_text(out / "next_run.md", report(results, meta, out))
        return 0
    table = load_table(args.runs)
    families = sorted(table["family"].unique()) if args.families is None else args.families
    setups = {}
    for f in families:
        s = family_setup(table, f)
        if s is not None:
            setups[f] = s
    order = sorted(setups, key=lambda f: (setups[f]["n_runs"], f))
    log(f"{len(order)} families: {', '.join(order)}")
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other developers",
        "corpus": "shared runs.csv.gz (primary metric rows)",
        "families": f"{len(order)} with >= {MIN_SIZES} sizes at the {MIN_TOKENS:.0e} cut and <= {MAX_RUNS} pilot runs",
        "pilot sizes": f"at most {MAX_PILOT_SIZES} below the target, log-spaced from the smallest; runs thinned to {MAX_CHECKPOINTS} checkpoints",
        "cell fits": f"cellfit.fit_cell, {settings['chains']} chains x ({settings['warmup']} warmup + {settings['draws']} draws), target_accept 0.9, tree depth 8",
        "population": f"backtest.population_priors (per family, without its source group), {settings['chains']} chains x ({settings['warmup']} + {settings['draws']})",
        "information strategy": f"plan.next_run, {N_OUTCOMES} simulated outcomes per candidate, width with checkpoint noise",
        "seed": args.seed,
        "n_families": len(order),
        "partial": True,
    }
    results = pd.read_csv(csv_path) if csv_path.is_file() else pd.DataFrame()
    done = set()
    if len(results):
        finished = results.groupby("family").apply(lambda g: set(g.loc[g["last"].astype(bool), "strategy"]) >= set(STRATEGIES))
        done = set(finished[finished].index)
        results = results[results["family"].isin(done)]
        log(f"resuming: {len(done)} families already finished")
    work = Path(args.work) if args.work else DEFAULT_WORK
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    priors, info = cached_priors(args.runs, order, settings, args.seed, work)
    if info is not None:
        atomic_write_csv(info, out / "next_run_population.csv")
    meta["population seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    rows = results.to_dict("records")

    def emit(row):
        rows.append(row)
        atomic_write_csv(pd.DataFrame(rows), csv_path)

    for family in order:
        if family in done:
            continue
        rows = [r for r in rows if r["family"] != family]
        t0 = time.perf_counter()
        run_family(family, setups[family], priors[family], settings, args.seed, emit, log)
        log(f"{family} done in {time.perf_counter() - t0:.0f} s")
        atomic_write_text(out / "next_run.md", report(pd.DataFrame(rows), meta, out))
    meta["partial"] = False
    meta["wall seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    atomic_write_text(out / "next_run.md", report(pd.DataFrame(rows), meta, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
