"""The teacher-output cache (jkd/train/teacher_cache.py): cached KD is live KD's function, the students'
views are the teacher's views bit for bit, and a wrong, missing, unfinished or corrupt cache is refused."""
import errno
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jkd import losses, sharding
from jkd.data.augment import draw_views, views_from_records
from jkd.config import base_config, model_config
from jkd.data import make_data
from jkd.errors import ConfigError
from jkd.train import cache_format, teacher_cache
from jkd.train.distill import load_teachers
from jkd.train.loop import compile_steps, teacher_views
from jkd.train.objectives import resolve_augment, resolve_objective
from jkd.train.supervised import model_spec
from jkd.trainers import run


def _teacher(workdir: str, steps: int) -> str:
    c = base_config()
    c.data.image_size, c.model, c.steps, c.batch_size = 8, model_config("vit_atto4"), steps, 16
    c.optimizer.warmup_steps, c.progress = 1, False
    run(c, workdir)
    return workdir


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two real digits teachers (vit_atto4, 8 px) that differ: 20 and 12 steps."""
    return (_teacher(str(tmp_path_factory.mktemp("teacher_a")), 20),
            _teacher(str(tmp_path_factory.mktemp("teacher_b")), 12))


def _config(teacher: str, cache_dir: str = "", **augment):
    c = base_config()
    c.trainer = "distill"
    c.data.image_size, c.batch_size, c.eval_batch_size, c.steps = 8, 16, 64, 3
    c.students = {"vit": model_config("vit_atto4")}
    c.teacher.checkpoint = teacher
    c.optimizer.warmup_steps, c.progress, c.log_every, c.checkpoint_every = 1, False, 1, 100
    c.augment.crop_scale, c.augment.flip, c.augment.mixup_alpha = (0.3, 1.0), True, 1.0
    for k, v in augment.items():
        setattr(c.augment, k, v)
    c.teacher_cache.dir, c.teacher_cache.draws = cache_dir, 1
    return c


def _pieces(c):
    """What the distill trainer builds before fit: data, mesh, specs, teachers, objectives, augment."""
    data = make_data(c.data, seed=c.seed, global_batch_size=c.batch_size)
    specs = {n: model_spec(e, c, data.num_classes) for n, e in c.students.items()}
    mesh = sharding.make_mesh(c.mesh)
    teachers = tuple(load_teachers(c, mesh))
    objectives = {n: resolve_objective(c, n, e, specs[n], [t[0] for t in teachers]) for n, e in c.students.items()}
    return data, mesh, specs, teachers, objectives, resolve_augment(c.augment, objectives)


def test_cached_step_is_live_step(teachers):
    """k = K, float32 values, the same draws: one cached step gives live KD's loss and updated params."""
    c = _config(teachers[0])
    c.optimizer.warmup_steps = 0  # a warm-up's first update has lr 0: nothing would move
    data, mesh, specs, ts, objectives, aug = _pieces(c)
    live = compile_steps(c, mesh, specs, num_classes=10, teachers=ts, objectives=objectives)
    cached = compile_steps(c, mesh, specs, num_classes=10, teachers=ts, objectives=objectives, cached=True)
    params = tuple(t[2] for t in ts)
    index = np.arange(16) * 7
    state = live.init()
    # the draws the live step makes: its augmentation key, from (rng, step) as make_train_step derives it
    aug_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)[0]
    d = jax.device_get(draw_views(aug_key, 16, 8, 8, crop_scale=aug.crop_scale, flip=aug.flip,
                                                mixup_alpha=aug.mixup_alpha))
    assert 0 < d.lam[0] < 1 and d.flip.any() and (d.crop_h < 8).any()  # every augmentation is exercised
    box = np.stack([d.top, d.left, d.crop_h, d.crop_w], -1)
    fields = {"index": index, "partner": index[d.partner], "box": box, "partner_box": box[d.partner],
              "flip": d.flip.astype(np.uint8), "partner_flip": d.flip[d.partner].astype(np.uint8), "lam": d.lam}
    batch = teacher_cache.records_batch(fields, data, mixup=True)
    topk = jax.jit(teacher_cache.make_teacher_topk(tuple(t[1] for t in ts), teacher_views(c, ts), k=10, crop=True,
                                                   flip=True, mixup=True))
    logp, classes = topk(params, sharding.put_batch(batch, mesh))
    cached_batch = {**batch, "teacher_logp": np.asarray(logp), "teacher_classes": np.asarray(classes)}
    live_batch = {k: v for k, v in data.train_examples(index).items()}

    s_live, m_live, _ = live.train_step(live.init(), sharding.put_batch(live_batch, mesh), params)
    s_cached, m_cached, _ = cached.train_step(cached.init(), sharding.put_batch(cached_batch, mesh), params)
    for name in ("vit/loss", "vit/kd", "vit/ce", "vit/teacher_agreement"):
        np.testing.assert_allclose(float(m_cached[name]), float(m_live[name]), rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(m_live["vit/kd"]) > 0
    diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         s_live.params, s_cached.params)
    assert max(jax.tree.leaves(diffs)) < 1e-6, diffs
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         s_live.params, live.init().params)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the step did update the params


def test_students_see_the_teachers_views_bit_for_bit(teachers, tmp_path):
    """Build a cache (batch 16), read it at batch 8: every view the reader rebuilds equals the one the
    builder scored, and the stored top-k is the teacher's on that view (float16 rounding)."""
    cache = str(tmp_path / "cache")
    c = _config(teachers[0], cache)
    c.teacher_cache.top_k, c.teacher_cache.build = 3, True
    summary = run(c, str(tmp_path / "w"))["teacher_cache"]
    assert summary["records"] == (1347 // 16) * 16 and summary["top_k"] == 3
    data, mesh, specs, ts, objectives, aug = _pieces(c)
    manifest = json.load(open(os.path.join(cache, "cache.json")))
    c.batch_size = 8
    read, info = teacher_cache.open_reader(c, cache, teachers=ts, data=data, augment_cfg=aug)
    views = jax.jit(lambda b: views_from_records(b, crop=True, flip=True, mixup=True))
    topk = jax.jit(teacher_cache.make_teacher_topk(tuple(t[1] for t in ts), teacher_views(c, ts), k=3, crop=True,
                                                   flip=True, mixup=True))
    for j in (0, 5):  # build batch j = reader steps 2j, 2j + 1
        built = teacher_cache.records_batch(teacher_cache.draw_records(manifest["shape"], 0, j, data, aug), data,
                                            mixup=True)
        teacher_view = np.asarray(views(built))
        logp, classes = topk(tuple(t[2] for t in ts), built)
        for half in (0, 1):
            got = read(2 * j + half)
            rows = slice(8 * half, 8 * half + 8)
            assert np.array_equal(np.asarray(views(got)), teacher_view[rows])  # bit for bit
            np.testing.assert_array_equal(got["teacher_classes"][:, 0], np.asarray(classes)[rows, 0])
            np.testing.assert_allclose(got["teacher_logp"][:, 0], np.asarray(logp)[rows, 0], atol=2e-3, rtol=1e-3)
    # epochs beyond the stored draws wrap around to draw 0, in the stored order
    steps_per_pass = info["records"] // 8
    assert np.array_equal(read(steps_per_pass)["image"], read(0)["image"])
    # a cached run trains and records the cache it read
    c.teacher_cache.build = False
    out = run(c, str(tmp_path / "student"))
    assert out["teacher_cache"]["top_k"] == 3 and 0 <= out["models"]["vit"]["accuracy"] <= 1


def test_topk_completion():
    """FKD's marginal smoothing: the top-k keep their values, the rest share the remaining mass evenly;
    k = K gives the log-probabilities back exactly."""
    logits = jax.random.normal(jax.random.key(0), (4, 1, 10)) * 3
    logp = jax.nn.log_softmax(logits)
    values, classes = jax.lax.top_k(logp, 3)
    full = np.asarray(losses.complete_top_k(values, classes, 10))[0]  # [B, K]
    probs = np.exp(full)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    for b in range(4):
        kept = np.asarray(classes)[b, 0]
        np.testing.assert_allclose(full[b, kept], np.asarray(values)[b, 0], rtol=1e-6)
        rest = np.delete(probs[b], kept)
        np.testing.assert_allclose(rest, (1 - np.exp(np.asarray(values)[b, 0]).sum()) / 7, rtol=1e-5)
    values, classes = jax.lax.top_k(logp, 10)
    np.testing.assert_array_equal(np.asarray(losses.complete_top_k(values, classes, 10))[0],
                                  np.asarray(logp)[:, 0])


def test_values_round_trip_in_every_dtype():
    x = np.array([[-0.01, -2.5, -30.0]], np.float32)
    for dtype, tol in (("float32", 0), ("float16", 1e-3), ("bfloat16", 8e-3)):
        back = cache_format.decode_values(cache_format.encode_values(x, dtype), dtype)
        np.testing.assert_allclose(back, x, rtol=tol)


def test_a_wrong_missing_unfinished_or_corrupt_cache_is_refused(teachers, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    c = _config(teachers[0], cache)
    c.teacher_cache.draws, c.teacher_cache.build = 2, True
    run(c, str(tmp_path / "w"))
    c.teacher_cache.build = False

    def refused(config, match):
        # every mismatch is reported before anything compiles
        with monkeypatch.context() as m:
            m.setattr(jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("compiled first")))
            with pytest.raises(ConfigError, match=match):
                run(config, str(tmp_path / "s"))

    other = _config(teachers[1], cache)
    refused(other, r"built from something else: teachers\.0\.params_sha256 \(cache: [0-9a-f]+")
    for field, value, match in (("crop_scale", (0.5, 1.0), r"augment\.crop_scale"), ("flip", False, r"augment\.flip"),
                                ("mixup_alpha", 0.0, r"augment\.mixup_alpha")):
        refused(_config(teachers[0], cache, **{field: value}), match)
    bad = _config(teachers[0], cache)
    bad.data.image_size = 16  # the teacher still gets its 8 px view, but the cache holds 8 px examples
    refused(bad, r"data\.image_size \(cache: 8, this run: 16\)")
    bad = _config(teachers[0], cache)
    bad.teacher_cache.top_k = 3
    refused(bad, r"top_k \(cache: 5, this run: 3\)")
    bad = _config(teachers[0], cache)
    bad.data.exclude_classes = (3,)
    refused(bad, r"data\.exclude_classes")
    bad = _config(teachers[0], cache)
    bad.teacher_cache.dtype = "float32"
    refused(bad, r"dtype \(cache: float16, this run: float32\)")
    bad = _config(teachers[0], cache)
    bad.feature_kd.method = "vitkd"
    refused(bad, r"feature KD")
    refused(_config(teachers[0], str(tmp_path / "nothing")), r"holds no cache")
    # resuming a build with other draws is refused too
    bad = _config(teachers[0], cache)
    bad.teacher_cache.build, bad.teacher_cache.seed = True, 7
    refused(bad, r"teacher_cache\.seed \(cache: 0, this run: 7\)")

    shard = os.path.join(cache, cache_format.shard_name(1, 0, 1))
    first = os.path.join(cache, cache_format.shard_name(0, 0, 1))
    kept = open(shard, "rb").read()
    with open(shard, "r+b") as f:  # one flipped byte
        f.seek(len(kept) // 2)
        f.write(bytes([kept[len(kept) // 2] ^ 0xFF]))
    refused(c, r"draw0001-proc000of001\.array_record is corrupt")
    os.remove(shard + ".json")  # a build killed before it finished this shard
    refused(c, r"draw0001-proc000of001\.array_record is unfinished")
    mtime = os.path.getmtime(first)
    c.teacher_cache.build = True
    run(c, str(tmp_path / "w"))  # resumes: rewrites draw 1 only
    assert open(shard, "rb").read() == kept and os.path.getmtime(first) == mtime
    c.teacher_cache.build = False
    os.remove(shard)
    refused(c, r"shard .*draw0001-proc000of001\.array_record is missing")


def test_a_full_disk_leaves_no_finished_looking_shard(tmp_path):
    path = str(tmp_path / "draw0000-proc000of001.array_record")

    def records():
        yield b"x" * 70
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        cache_format.write_shard(path, records())
    assert not os.path.exists(path) and not os.path.exists(path + ".json")
    assert not cache_format.shard_complete(path, 1)
    cache_format.write_shard(path, [b"x" * 70])  # the rerun writes it
    assert cache_format.shard_complete(path, 1)
    shutil.rmtree(tmp_path)
