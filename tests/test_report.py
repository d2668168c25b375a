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


def _stage(root, stage, models):
    d = root / stage
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"models": models}))


def test_methods_table_pairs_each_seed_with_its_twin(tmp_path):
    from jkd.report import methods_table
    for seed, (twin, kd) in enumerate([(0.80, 0.90), (0.90, 0.94)]):
        root = tmp_path / f"s{seed}"
        _stage(root, "label_only_vit", {"model": {"accuracy": twin}})
        _stage(root, "kd_hinton", {"vit": {"accuracy": kd, "teacher_agreement": 0.9, "teacher_kl": 0.2}})
        _stage(root, "kd_fm_x4", {"vit": {"accuracy": kd, "teacher_agreement": 0.9, "teacher_kl": 0.2}})
    table = methods_table([str(tmp_path / "s0"), str(tmp_path / "s1")])
    # paired differences +10 and +4 points: mean 7, sample std 4.24
    assert "| vit | hinton | 92.00 ± 2.83 | +7.00 ± 4.24 | 90.00, 94.00 | 90.00 | 0.200 |" in table
    assert "| vit | label only | 85.00 ± 7.07 | – | 80.00, 90.00 | – | – |" in table
    assert table.index("| vit | hinton") < table.index("| vit | fm_x4")  # known methods first
