"""The colabs/ notebooks (issue 9): stored without outputs, and each one runs top to bottom in a
fresh `python3` kernel (ipykernel's) in FAST mode against this checkout, failing on any cell error.

Cost control (the whole suite has a ~15 min budget): the notebooks run two at a time (one kernel per
CPU core of CI), and the kernels share a JAX persistent compilation cache in the test's tmp dir, so
the programs that notebooks 01, 03 and 05 share (same FAST quickstart teacher and students) compile
once: 01 runs first (beside 02), the others after it.
"""
import asyncio
import glob
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colabs", "*.ipynb")))
NAMES = [os.path.basename(p) for p in NOTEBOOKS]
CONCURRENCY = 2
CELL_TIMEOUT_S = 600


def test_notebooks_exist_and_are_stored_without_outputs():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{os.path.basename(path)} cell {i} has outputs stored: clear them before committing "
                    f"(Jupyter's 'Clear All Outputs', or `jupyter nbconvert --clear-output --inplace "
                    f"colabs/*.ipynb` where nbconvert is installed)")
        readme = open(os.path.join(REPO, "README.md")).read()
        assert f"colabs/{os.path.basename(path)}" in readme, f"README does not link {path}"


def _kernel_env(tmp: str) -> dict:
    env = dict(os.environ)
    env.update({
        "JKD_FAST": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p),  # this checkout's jkd
        "TMPDIR": tmp,  # the notebooks' tempfile workdirs land in the test's tmp dir
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",  # no 8 fake devices (conftest): one CPU device, as on a user's laptop
        "JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    })
    return env


async def _run_all(tmp: str) -> dict:
    """{notebook name: (error text or None, seconds)}. Phase 1: 01 (fills the compile cache) beside 02;
    phase 2: the rest, CONCURRENCY kernels at a time."""
    env = _kernel_env(tmp)
    gate = asyncio.Semaphore(CONCURRENCY)
    results = {}

    async def run(path):
        async with gate:
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                    resources={"metadata": {"path": tmp}})
            t0 = time.perf_counter()
            try:
                await client.async_execute(env=env)
                error = None
            except CellExecutionError as e:
                error = str(e)[-4000:]
            results[os.path.basename(path)] = (error, time.perf_counter() - t0)

    first = [p for p in NOTEBOOKS if os.path.basename(p).startswith(("01_", "02_"))]
    await asyncio.gather(*(run(p) for p in first))
    await asyncio.gather(*(run(p) for p in NOTEBOOKS if p not in first))
    return results


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    results = asyncio.run(_run_all(str(tmp_path_factory.mktemp("notebooks"))))
    print("\nnotebook wall times: " + ", ".join(f"{k} {v[1]:.0f} s" for k, v in results.items()))
    return results


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_fast_mode(executed, name):
    error, _ = executed[name]
    assert error is None, f"{name} failed:\n{error}"
