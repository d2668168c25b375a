"""The library pieces the notebooks call (issue 17): jkd.notebook (FAST switch, shared workdirs,
accelerator warning, claims), jkd.evaluate's paired bootstrap and similarity structure, and
jkd.rundir's metrics reader. Seconds; the notebooks themselves run in tests/test_notebooks.py."""
import json
import os

import numpy as np
import pytest

from jkd import evaluate, notebook, rundir


def test_fast_mode_and_recipe_presets(monkeypatch):
    monkeypatch.setenv("JKD_FAST", "1")
    assert notebook.fast_mode() is True
    monkeypatch.setenv("JKD_FAST", "0")
    assert notebook.fast_mode() is False
    monkeypatch.setenv("JKD_FAST", "yes")
    with pytest.raises(ValueError, match="JKD_FAST: 0 or 1"):
        notebook.fast_mode()
    fast, full = notebook.recipe("configs/quickstart.py", True), notebook.recipe("configs/quickstart.py", False)
    assert fast.teacher.model.name == full.teacher.model.name and fast.students.to_dict() == full.students.to_dict()
    assert (fast.teacher.steps, fast.steps) < (full.teacher.steps, full.steps)


def test_shared_workdir_and_claims(monkeypatch, tmp_path):
    monkeypatch.setenv("JKD_NOTEBOOK_DIR", str(tmp_path / "nb"))
    monkeypatch.setenv("JKD_NOTEBOOK_CLAIMS", str(tmp_path / "claims"))
    monkeypatch.setenv("JKD_FAST", "1")
    assert notebook.shared_workdir("quickstart", True) == str(tmp_path / "nb" / "quickstart_fast")
    assert notebook.shared_workdir("quickstart", False).endswith("quickstart_full")
    fast, workdir = notebook.setup("99")
    assert fast and os.path.isdir(workdir) and workdir.startswith(str(tmp_path / "nb"))
    notebook.claims(acc=np.float32(0.5), ok=True, n=3)
    assert json.load(open(tmp_path / "claims" / "99.json")) == {"acc": 0.5, "ok": True, "n": 3.0}


def test_backend_warning_only_for_cpu_jax_beside_an_accelerator():
    assert notebook.check_backend("gpu", "gpu") is None and notebook.check_backend("cpu", None) is None
    assert "[cuda,export]" in notebook.check_backend("cpu", "gpu")
    assert "[tpu,export]" in notebook.check_backend("cpu", "tpu")


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.9
    same = evaluate.paired_bootstrap(a, a)
    assert same["diff"] == same["low"] == same["high"] == 0.0  # paired: identical models have no spread
    b = a.copy()
    b[:40] = False  # b is wrong on 40 more examples (where a was right)
    d = evaluate.paired_bootstrap(a, b)
    assert d["diff"] == pytest.approx(a[:40].mean() * 40 / 400)
    assert 0 < d["low"] < d["diff"] < d["high"]
    with pytest.raises(ValueError, match="two equal, non-empty"):
        evaluate.paired_bootstrap(a, a[:10])


def test_structure_correlation_ignores_the_diagonal():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 16, 8))
    sim = evaluate.position_similarity(x)
    assert sim.shape == (5, 16, 16) and np.allclose(np.diagonal(sim, axis1=1, axis2=2), 1.0)
    assert np.allclose(evaluate.structure_correlation(sim, sim), 1.0)
    # A linear map that keeps the geometry (a rotation) keeps the structure; other widths compare too.
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert np.allclose(evaluate.structure_correlation(sim, evaluate.position_similarity(x @ q)), 1.0)
    unrelated = evaluate.position_similarity(rng.normal(size=(5, 16, 3)))
    off = evaluate.structure_correlation(sim, unrelated)
    with_diag = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(sim, unrelated)]
    assert np.all(np.abs(off) < 0.5) and np.mean(with_diag) > np.mean(off)  # the diagonal inflates it
    assert evaluate.position_similarity(rng.normal(size=(2, 4, 4, 3))).shape == (2, 16, 16)  # a conv map


def test_metrics_reader(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for r in ({"step": 10, "split": "train", "vit/loss": 1.0}, {"step": 10, "split": "eval", "vit/accuracy": 0.5},
                  {"step": 20, "split": "eval", "vit/accuracy": 0.75}):
            f.write(json.dumps(r) + "\n")
    assert len(rundir.read_metrics(str(tmp_path))) == 3
    assert rundir.curve(str(tmp_path), "vit/accuracy") == ([10, 20], [0.5, 0.75])
    assert rundir.curve(str(tmp_path), "vit/loss", split="train") == ([10], [1.0])
    with pytest.raises(KeyError, match="keys: \\['vit/accuracy'\\]"):
        rundir.curve(str(tmp_path), "convnext/accuracy")
    with pytest.raises(FileNotFoundError, match="no metrics log"):
        rundir.read_metrics(str(tmp_path / "nothing"))
