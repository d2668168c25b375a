import json

from jkd.report import aggregate


def test_aggregate_mean_and_sample_std(tmp_path):
    for seed, acc in enumerate([0.90, 0.92, 0.94]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        rows = [{"model": "vit_atto4", "role": "KD student", "params": 10, "accuracy": acc, "wall_time_s": 2.0}]
        (d / "results.json").write_text(json.dumps({"seed": seed, "rows": rows}))
    table = aggregate([str(tmp_path / f"s{i}") for i in range(3)])
    assert "| vit_atto4 | KD student | 10 | 92.00 ± 2.00 | 90.00, 92.00, 94.00 | 2.0 |" in table
    assert "Seeds: 0, 1, 2" in table
