"""jkd.sweep: specs checked before any run, cartesian product, resume, tables and plots, and the same
tool on a real (tiny) digits config."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jkd import sweep
from jkd.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THEORY = os.path.join(REPO, "configs/theory/multiview.py")
DIGITS = os.path.join(REPO, "configs/digits_supervised.py")
TINY_DIGITS = ["model.name=vit_atto4", "data.image_size=8", "steps=3", "batch_size=16", "eval_batch_size=64",
               "optimizer.warmup_steps=1", "progress=False", "checkpoint_every=3"]


def never(config, workdir):
    raise AssertionError("a point ran before the sweep was fully checked")


class Recorder:
    """A fake trainer: records the points it ran, returns a nested summary derived from them."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, config, workdir):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt  # an interrupted sweep
        self.calls.append((config.data.mu, config.seed))
        os.makedirs(workdir, exist_ok=True)
        acc = 1.0 - config.data.mu / 2 + 0.01 * config.seed
        views = np.zeros((4, 4, 2), bool)
        views[:, :, 0] = True
        with open(os.path.join(workdir, "results.json"), "w") as f:  # what the theory figures hook reads
            json.dump({"results": {"net": {"single": {"learned": views.tolist()}}}}, f)
        return {"seed": config.seed, "net/single/single_view_acc": acc, "net/ensemble/single_view_acc": acc + 0.1,
                "nested": {"value": 3, "name": "dropped", "flag": True}, "rows": [{"accuracy": 0.5}]}


@pytest.mark.parametrize("spec, message", [
    ("data.mue=0.1", r"config\.data\.mue: unknown field \(did you mean 'data\.mu'"),
    ("sed=0:3", r"config\.sed: unknown field \(did you mean 'seed'"),
    ("seed=0:", r"config\.seed: malformed range '0:'"),
    ("seed=a:3", r"config\.seed: malformed range 'a:3'"),
    ("seed=3:1", r"config\.seed: range '3:1' in --sweep is empty"),
    ("seed=0.5,1", r"config\.seed: cannot read '0\.5' as a int"),
    ("data.mu=0.1,,0.2", r"config\.data\.mu: empty value"),
    ("data.mu=0.1,0.1", r"config\.data\.mu: --sweep lists a value twice"),
    ("kd=2", r"config\.kd: is a group of fields"),
    ("data.mu", r"--sweep 'data\.mu': expected 'field=a,b,c'"),
    ("data.mu=0.1,1.5", r"sweep point data\.mu=1\.5,seed=0: config\.data\.mu: a probability, must be in \[0, 1\]"),
    ("data.dim=16", r"sweep point data\.dim=16,seed=0: config\.data\.dim: .* dim >= 20"),
])
def test_bad_sweep_specs_fail_before_any_run(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        sweep.run_sweep(THEORY, [spec, "seed=0:2"], str(tmp_path), runner=never, progress=False)
    assert not os.path.exists(tmp_path / "results.jsonl")


def test_bad_digits_value_fails_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep point model\.name=vit_nope4: config\.model\.name: unknown model"):
        sweep.run_sweep(DIGITS, ["model.name=vit_atto4,vit_nope4"], str(tmp_path), runner=never, progress=False)
    with pytest.raises(ConfigError, match=r"config\.optimizer\.learning_rate: unknown field \(did you mean .*"
                                          r"'optimizer\.lr'"):
        sweep.run_sweep(DIGITS, ["seed=0:2"], str(tmp_path), sets=["optimizer.learning_rate=1"], runner=never)


def test_plan_is_the_typed_cartesian_product():
    _, swept, fixed, points = sweep.plan(THEORY + ":tiny", ["data.mu=0.1,0.2,0.3", "seed=0:6:2"],
                                         ["variants=net", "data.noise_orthogonal=false", "kd.temperature=2"])
    assert swept == {"data.mu": [0.1, 0.2, 0.3], "seed": [0, 2, 4]}
    assert fixed == {"variants": "net", "data.noise_orthogonal": False, "kd.temperature": 2.0}
    assert [p for p, _ in points][:2] == [{"data.mu": 0.1, "seed": 0}, {"data.mu": 0.1, "seed": 2}]
    cfg = points[-1][1]
    assert (cfg.data.mu, cfg.seed, cfg.variants, cfg.data.noise_orthogonal) == (0.3, 4, "net", False)
    assert isinstance(cfg.kd.temperature, float) and cfg.data.num_classes == 4  # the :tiny arg was used
    assert sweep.point_name(points[0][0]) == "data.mu=0.1,seed=0"
    assert sweep._split_values("(0.5, 1.0),(0.8,1.0), 'a,b'") == ["(0.5, 1.0)", "(0.8,1.0)", "'a,b'"]


def test_resume_skips_finished_points_and_reports(tmp_path):
    specs = ["data.mu=0.1,0.3", "seed=0:3"]
    first = Recorder(fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(THEORY, specs, str(tmp_path), runner=first, progress=False)
    assert len(first.calls) == 4
    again = Recorder()
    records = sweep.run_sweep(THEORY, specs, str(tmp_path), runner=again, progress=False)
    assert again.calls == [(0.3, 1), (0.3, 2)]  # only the two unfinished points
    assert [r["point"] for r in records][:2] == [{"data.mu": 0.1, "seed": 0}, {"data.mu": 0.1, "seed": 1}]
    assert records[0]["metrics"] == {"seed": 0.0, "net/single/single_view_acc": 0.95,
                                     "net/ensemble/single_view_acc": 1.05, "nested/value": 3.0,
                                     "rows/0/accuracy": 0.5}
    # nothing left: a rerun runs nothing; more seeds later run only the new ones
    assert sweep.run_sweep(THEORY, specs, str(tmp_path), runner=never, progress=False)
    more = Recorder()
    sweep.run_sweep(THEORY, ["data.mu=0.1,0.3", "seed=0:4"], str(tmp_path), runner=more, progress=False)
    assert more.calls == [(0.1, 3), (0.3, 3)]
    assert len(open(tmp_path / "results.jsonl").read().splitlines()) == 8

    table = open(tmp_path / "table.md").read()
    # mu = 0.1, seeds 0..3: single-view accuracy 95.0 + (0, 1, 2, 3) -> 96.5 ± 1.3 (sample std)
    assert "| 0.1 | net/single | 4 | 96.5 ± 1.3 |" in table
    assert "| 0.3 | net/ensemble | 4 | 96.5 ± 1.3 |" in table
    for png in ("single_view_acc_vs_data.mu.png", "view_learning_0.png", "view_learning_1.png"):
        assert os.path.getsize(tmp_path / "plots" / png) > 0



def test_table_leaves_run_costs_out():
    """Run costs are not results: the theory probe's 'net/wall_time_s' and 'wall_time_s' once made
    stray table rows named 'net' and '–'. Other prefix-less metrics form a row named '(run)'."""
    from jkd import sweep_report
    records = [{"point": {"data.mu": 0.1, "seed": s}, "metrics": {
        "seed": s, "wall_time_s": 20.0 + s, "net/wall_time_s": 19.0, "net/single/single_view_acc": 0.8,
        "steps": 100.0}} for s in (0, 1)]
    text = sweep_report.table(sweep_report.aggregate(records))
    assert [line.split(" | ")[1] for line in text.splitlines()[2:]] == ["net/single", "(run)"]
    assert "wall_time" not in text

def test_workdir_of_another_sweep_is_refused(tmp_path):
    sweep.run_sweep(THEORY, ["seed=0:1"], str(tmp_path), sets=["variants=net"], runner=Recorder(), progress=False)
    with pytest.raises(ConfigError, match=r"--workdir: .* holds a sweep of --config .* use another --workdir"):
        sweep.run_sweep(THEORY, ["seed=0:1"], str(tmp_path), sets=["variants=rf"], runner=never, progress=False)


def test_same_tool_sweeps_a_digits_config(tmp_path, capsys):
    """A real jkd trainer (supervised digits, 3 steps) through the CLI entry point, then resumed."""
    argv = ["--config", DIGITS, "--workdir", str(tmp_path), "--sweep", "seed=0:1"]
    for s in TINY_DIGITS:
        argv += ["--set", s]
    sweep.main(argv)
    (record,) = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert record["point"] == {"seed": 0}
    assert 0.0 <= record["metrics"]["models/model/accuracy"] <= 1.0
    assert record["metrics"]["steps"] == 3.0
    assert os.path.exists(tmp_path / "points" / "seed=0" / "summary.json")
    out = capsys.readouterr().out
    assert "models/model" in out and "accuracy (%)" in out
    sweep.main(argv)  # resumed: nothing to run
    assert len(open(tmp_path / "results.jsonl").read().splitlines()) == 1


def test_cli_bad_spec_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jkd.sweep", "--config", THEORY, "--workdir", str(tmp_path),
                           "--sweep", "data.mu=0.1", "--sweep", "seed=1:1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "config.seed: range '1:1' in --sweep is empty" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_teacher_paths_may_contain_commas(tmp_path):
    """Point workdirs are named `a=1,b=2`: a teacher under one must not be split at its comma."""
    from jkd.train.distill import split_paths
    a, b = tmp_path / "kd.temperature=1.0,seed=0" / "teacher", tmp_path / "plain"
    a.mkdir(parents=True)
    b.mkdir()
    assert split_paths(str(a)) == [str(a)]
    assert split_paths(f"{a},{b}") == [str(a), str(b)]
    assert split_paths(f"{b}, {a}") == [str(b), str(a)]
    assert split_paths(f"{b},/no/such,dir") == [str(b), "/no/such", "dir"]  # unknown pieces stay as given


def test_quickstart_sweep_over_two_fields(tmp_path):
    """The pipeline's stages read their teacher from inside a point workdir whose name has a comma."""
    quickstart = os.path.join(REPO, "configs/hinton_omitted.py")
    argv = ["--config", f"{quickstart}:none", "--workdir", str(tmp_path), "--sweep", "kd.temperature=2,4",
            "--sweep", "seed=0:1", "--metrics", "accuracy"]
    for s in ("steps=12", "teacher.steps=12", "optimizer.warmup_steps=2", "progress=False", "eval_every=12",
              "checkpoint_every=12", "students.mlp800.name=mlp_16x2", "students.mlp30.name=mlp_8x2",
              "teacher.model.name=mlp_32x2"):
        argv += ["--set", s]
    sweep.main(argv)
    records = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert [r["point"] for r in records] == [{"kd.temperature": 2.0, "seed": 0}, {"kd.temperature": 4.0, "seed": 0}]
