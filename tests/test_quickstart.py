"""Smoke run of the quickstart through the CLI at minimal steps."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_smoke(tmp_path):
    workdir = str(tmp_path / "q")
    cmd = [sys.executable, "-m", "jkd.main", "--config", os.path.join(REPO, "configs/quickstart.py"),
           "--workdir", workdir, "--config.steps=3", "--config.teacher.steps=3",
           "--config.optimizer.warmup_steps=1", "--config.progress=False"]
    # One CPU device, as on a user's laptop (the conftest's 8 fake devices only slow compiling here).
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "").strip()}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    roles = [r["role"].split(" (")[0] for r in results["rows"]]
    assert {r.get("method") for r in results["rows"]} == {None, "hinton"}
    assert roles == ["teacher", "label-only student", "KD student", "label-only student", "KD student"]
    assert {r["model"] for r in results["rows"]} == {"vit_pico4", "vit_atto4", "convnext_zepto"}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["params"] > 0 for r in results["rows"])
    # The quickstart distils downward: every student is smaller than its teacher (issue 16).
    teacher_params = results["rows"][0]["params"]
    assert all(r["params"] < teacher_params for r in results["rows"][1:]), results["rows"]
    table = open(os.path.join(workdir, "results.md")).read()
    assert "| vit_atto4 | KD student" in table
    assert "| model | role | params | test accuracy |" in proc.stdout
    # A rerun finds every stage finished: nothing is trained or logged twice, same table.
    logs = {stage: open(os.path.join(workdir, stage, "metrics.jsonl")).read()
            for stage in ("teacher", "kd_hinton", "label_only_vit", "label_only_convnext")}
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage, log in logs.items():
        assert open(os.path.join(workdir, stage, "metrics.jsonl")).read() == log
    assert open(os.path.join(workdir, "results.md")).read() == table
