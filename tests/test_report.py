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


def test_methods_vs_pairs_old_and_new_by_seed(tmp_path):
    from jkd.report import compare_methods
    for tag, accs in (("old", [0.90, 0.92]), ("new", [0.95, 0.93])):
        for seed, acc in enumerate(accs):
            root = tmp_path / f"{tag}{seed}"
            _stage(root, "label_only_vit", {"model": {"accuracy": 0.8}})
            _stage(root, "kd_hard", {"vit": {"accuracy": acc, "teacher_agreement": 0.9, "teacher_kl": 0.2}})
    table = compare_methods([str(tmp_path / "old0"), str(tmp_path / "old1")],
                            [str(tmp_path / "new0"), str(tmp_path / "new1")])
    # per-seed differences +5 and +1: mean 3, sample std 2.83
    assert "| vit | hard | 91.00 ± 1.41 | 94.00 ± 1.41 | +3.00 ± 2.83 | 90.00, 92.00 | 95.00, 93.00 |" in table
    assert "| vit | label only | 80.00 ± 0.00 | 80.00 ± 0.00 | +0.00 ± 0.00 |" in table


def test_omitted_table_means_over_seeds(tmp_path):
    from jkd.report import omitted_table

    def errors(om, other):
        return {"omitted_errors": om, "other_errors": other, "omitted_count": 40, "other_count": 400}

    dirs = []
    for seed, before in enumerate([30, 34]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        models = {"teacher": errors(1, 5),
                  "kd_hinton.mlp": {"model": "mlp_8x2", "before": errors(before, 6), "prior": errors(4, 8),
                                    "oracle": errors(2, 7), "prior_shift": [2.0], "oracle_shift": [3.0]}}
        (d / "omitted.json").write_text(json.dumps({"excluded_classes": [3], "models": models}))
        dirs.append(str(d))
    table = omitted_table(dirs)
    assert "Excluded [3]: 40 test images of them, 400 of the other classes; 2 seeds" in table
    assert ("| mlp_8x2 | kd_hinton.mlp | 32.00 ± 2.83 | 4.00 ± 0.00 | 2.00 ± 0.00 | 6.00 ± 0.00 | 8.00 ± 0.00 | "
            "7.00 ± 0.00 | 2.00 ± 0.00 | 3.00 ± 0.00 |") in table


def test_cache_table_pairs_each_seed_with_its_live_run(tmp_path):
    from jkd.report import cache_table
    for seed, (live, cached) in enumerate([(0.90, 0.88), (0.94, 0.90)]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        rows = [{"run": "live", "k": "-", "accuracy": {"vit": live}, "epoch_s": 4.0},
                {"run": "cached", "k": 5, "accuracy": {"vit": cached}, "epoch_s": 2.0 + seed}]
        (d / "results.json").write_text(json.dumps({"seed": seed, "teacher_accuracy": 0.97, "rows": rows}))
    table = cache_table([str(tmp_path / "s0"), str(tmp_path / "s1")])
    assert "| live | - | 92.00 ± 2.83 | – | 4.00 ± 0.00 | 1.00 ± 0.00 |" in table
    # differences paired by seed (-2, -4), live / cached time per seed (2.0, 1.33)
    assert "| cached | 5 | 89.00 ± 1.41 | -3.00 ± 1.41 | 2.50 ± 0.71 | 1.67 ± 0.47 |" in table
