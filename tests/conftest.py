"""Test setup: 8 fake CPU devices for the sharding tests (must be set before jax is imported)."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test session, shared by this process and the runs it starts
# as subprocesses (kill/resume, CLI, multi-process tests): many tests compile the same tiny programs,
# and compiling, not running, is most of the suite's time. Fresh per session, so CI starts cold.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jkd_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

from jkd.config import base_config, model_config  # noqa: E402


@pytest.fixture
def tiny_config():
    """A fast supervised digits config: tiny ViT, 8 px, few steps, no progress bar."""
    c = base_config()
    c.data.image_size = 8
    c.model = model_config("vit_atto4")
    c.steps = 4
    c.batch_size = 16
    c.eval_batch_size = 64
    c.optimizer.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = 2
    c.progress = False
    return c


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"


def pytest_collection_modifyitems(session, config, items):
    """The notebooks first: they are the longest file (several minutes, a chain 01 -> 03/05/06), so
    with pytest-xdist's --dist loadfile one worker starts them at once while the other works through
    the rest, instead of the notebooks running last and alone."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_notebooks.py") else 1)
