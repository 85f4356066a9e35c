"""Re-execute every notebook in notebooks/ with small sampler settings; a cell error fails.

Each notebook has a code cell tagged ``parameters`` holding its settings (CHAINS, WARMUP,
DRAWS, ...). A cell with :data:`SMOKE_SETTINGS` is inserted right after it (as papermill
does), so the notebook runs end to end in seconds to minutes instead of its published size.
Notebooks run two at a time, each in a temporary directory; the shared corpus is passed
through ``BAYES_SCALING_DATA`` (notebooks that read it are skipped when it is absent) and
the repository through ``PYTHONPATH``.

The notebooks that fit the shared corpus are marked ``slow`` (alone, on this 2-core machine,
their smoke runs took 61-150 s each (quickstart 92 s), and 355 s all four together inside the
default suite, its longest item); the synthetic quickstart runs by default. The pilot-ladder
notebook (05) fits its synthetic corpus twice (two compilations): its smoke run took 313 s on
the busy machine (load ~12), so it is slow too.
"""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: Code run right after the ``parameters`` cell. QUICK lets a notebook shrink its corpus.
SMOKE_SETTINGS = """\
# injected by tests/test_notebooks.py: smoke-test settings
CHAINS = 1
WARMUP = 50
DRAWS = 50
QUICK = True
if "MAX_CHECKPOINTS" in globals():
    MAX_CHECKPOINTS = min(MAX_CHECKPOINTS, 8)
"""
#: Notebooks that are slow although they do not read the corpus (see the module docstring).
SLOW_SYNTHETIC = ("05_plan_next_run.ipynb",)
#: Seconds one cell may run before the notebook fails.
CELL_TIMEOUT = 900


def inject_smoke_settings(nb):
    """Insert :data:`SMOKE_SETTINGS` after the cell tagged ``parameters``; returns the notebook."""
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise AssertionError("no code cell tagged 'parameters': the test cannot shrink the sampler settings")
    cell = nbformat.v4.new_code_cell(SMOKE_SETTINGS, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


def _needs_corpus(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return "BAYES_SCALING_DATA" in text or "default_data_dir" in text or "runs.csv" in text


def _corpus_dir() -> Path:
    env = os.environ.get("BAYES_SCALING_DATA")
    return Path(env).resolve() if env else (ROOT / ".." / "shared" / "data").resolve()


def test_every_notebook_has_a_parameters_cell():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        inject_smoke_settings(nbformat.read(path, as_version=4))


def _execute(path: Path, workdir: Path) -> None:
    nb = inject_smoke_settings(nbformat.read(path, as_version=4))
    shutil.copytree(path.parent, workdir, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError naming the cell and the traceback


@pytest.fixture(scope="module")
def executed(request, tmp_path_factory):
    """Run every selected notebook once, two kernels at a time; notebook -> exception or None.

    A kernel spends much of a smoke run compiling on one core (NumPyro initialises the model
    op by op), so two at a time on two cores are faster: 243 s vs 309 s for the four here.
    """
    corpus = _corpus_dir()
    env = {
        "BAYES_SCALING_DATA": str(corpus),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
    }
    selected = {item.callspec.params["path"] for item in request.session.items if getattr(item, "originalname", "") == "test_notebook_runs"}
    runnable = [p for p in NOTEBOOKS if p in selected and ((corpus / "runs.csv.gz").is_file() or not _needs_corpus(p))]
    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(max_workers=2) as pool:
        for key, value in env.items():
            mp.setenv(key, value)  # kernels inherit the environment of this process
        futures = {p: pool.submit(_execute, p, tmp_path_factory.mktemp(p.stem) / "notebooks") for p in runnable}
        return {p: f.exception() for p, f in futures.items()}


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if _needs_corpus(p) or p.name in SLOW_SYNTHETIC else []) for p in NOTEBOOKS]
)
def test_notebook_runs(path, executed):
    if path not in executed:
        pytest.skip(f"{path.name} reads the shared corpus, not found at {_corpus_dir()}")
    if executed[path] is not None:
        raise executed[path]
