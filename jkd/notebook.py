"""What the colabs/ notebooks share: run size, workdirs, accelerator check, and the numbers their text
relies on (so that tests/test_notebooks.py can check each claim against the FAST output).

    FAST, WORKDIR = notebook.setup("01")              # prints jax/backend/FAST; warns on a CPU-only JAX
    config = notebook.recipe("configs/quickstart.py", FAST)   # ':fast' preset when FAST
    shared = notebook.shared_workdir("quickstart", FAST)       # one resumable workdir for 01, 03, 05, 06
    notebook.claims(kd_vit=0.93, label_only_vit=0.88)          # -> <JKD_NOTEBOOK_CLAIMS>/01.json

FAST (default everywhere but Colab; JKD_FAST=1/0 overrides) picks each recipe's `fast` preset: the
same models at fewer steps, minutes on 2 CPU cores. Workdirs live under JKD_NOTEBOOK_DIR (default
<tempdir>/jkd_notebooks); the shared quickstart workdir lets notebooks 03, 05 and 06 reuse the
teacher and students that 01 trained (every stage is resumable and skipped when finished).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import warnings

_NAME: list[str] = []  # the running notebook's name (setup), for claims()


def in_colab() -> bool:
    return importlib.util.find_spec("google.colab") is not None


def fast_mode() -> bool:
    """JKD_FAST=1/0 if set, else True outside Colab."""
    value = os.environ.get("JKD_FAST", "0" if in_colab() else "1")
    if value not in ("0", "1"):
        raise ValueError(f"JKD_FAST: 0 or 1, got {value!r}")
    return value == "1"


def repo_root() -> str:
    """The checkout jkd runs from (configs/ sits next to the package)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, "configs")):
        raise RuntimeError(f"no configs/ next to {__file__}: install jkd from a clone with pip install -e")
    return root


def notebook_dir() -> str:
    """Where the notebooks' workdirs go: JKD_NOTEBOOK_DIR, else <tempdir>/jkd_notebooks."""
    return os.environ.get("JKD_NOTEBOOK_DIR") or os.path.join(tempfile.gettempdir(), "jkd_notebooks")


def shared_workdir(name: str, fast: bool) -> str:
    """<notebook_dir>/<name>_fast or _full: one workdir that several notebooks resume (created)."""
    path = os.path.join(notebook_dir(), f"{name}_{'fast' if fast else 'full'}")
    os.makedirs(path, exist_ok=True)
    return path


def accelerator_attached() -> str | None:
    """'gpu' when an NVIDIA GPU answers nvidia-smi, 'tpu' when TPU device files exist, else None."""
    if shutil.which("nvidia-smi"):
        try:
            if subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0:
                return "gpu"
        except (OSError, subprocess.SubprocessError):
            pass
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get("TPU_NAME"):
        return "tpu"
    return None


def check_backend(backend: str, attached: str | None) -> str | None:
    """The warning to show when JAX runs on CPU although an accelerator is attached (else None)."""
    if backend != "cpu" or attached is None:
        return None
    extra = {"gpu": "cuda", "tpu": "tpu"}[attached]
    return (f"a {attached.upper()} is attached but JAX runs on CPU: this runtime's JAX is a CPU build. Install the "
            f"accelerator build with `pip install -e '<jkd checkout>[{extra},export]'` (README 'GPU and TPU'), "
            f"then restart the runtime; until then everything runs on the CPU, slowly.")


def setup(name: str) -> tuple[bool, str]:
    """(FAST, a fresh workdir for this notebook); prints what runs where, warns on a CPU-only JAX."""
    import jax

    _NAME[:] = [name]
    fast = fast_mode()
    os.makedirs(notebook_dir(), exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=f"{name}_", dir=notebook_dir())
    message = check_backend(jax.default_backend(), accelerator_attached())
    if message:
        warnings.warn(message, stacklevel=2)
    print(f"jkd from {repo_root()} | jax {jax.__version__} on {jax.default_backend()} "
          f"({jax.device_count()} device(s)) | FAST={fast} | workdir {workdir}")
    return fast, workdir


def recipe(path: str, fast: bool, arg: str | None = None):
    """The config of a recipe under the repo (e.g. 'configs/quickstart.py'): its 'fast' preset when
    fast, else `arg` (None: the recipe's default). Locked, as jkd.main gives it."""
    from jkd.sweep import load_config

    full = os.path.join(repo_root(), path)
    chosen = "fast" if fast else arg
    return load_config(full + (f":{chosen}" if chosen else ""))


def claims(**numbers) -> dict:
    """Record the numbers this notebook's text relies on: printed, and written as JSON to
    $JKD_NOTEBOOK_CLAIMS/<name>.json when that is set (tests/test_notebooks.py checks them)."""
    clean = {k: (float(v) if not isinstance(v, (str, bool, list, dict)) else v) for k, v in numbers.items()}
    where = os.environ.get("JKD_NOTEBOOK_CLAIMS")
    if where:
        if not _NAME:
            raise RuntimeError("notebook.claims: call notebook.setup(name) first")
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, f"{_NAME[0]}.json"), "w") as f:
            json.dump(clean, f, indent=1)
    print("numbers the text relies on: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in clean.items()))
    return clean
