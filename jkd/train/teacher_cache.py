"""A consistent teacher-output cache (FKD, Shen & Xing, ECCV 2022): run the frozen teacher once over
E draws of augmented views, store per example and draw the view's parameters with the teacher's
top-k log-probabilities, then distil without a teacher forward.

    --config.teacher_cache.dir=/data/cache --config.teacher_cache.build=True   # write it (resumable), stop
    --config.teacher_cache.dir=/data/cache                                     # distil reading it
    python -m jkd.main --config configs/teacher_cache.py --workdir /tmp/jkd_cache   # the recipe: both, per k

Consistency (function matching's point): a student never sees a view the teacher did not score.
Each record holds the example's crop box and flip and, under mixup, its partner's index, crop box,
flip and lambda; the student's view is rebuilt from them with the function the builder used
(`jkd.data.augment.views_from_records`): the same parameters and the same computation, bit-identical
when computed alone (tests/test_teacher_cache.py); inside the two compiled programs XLA may fuse it
with different neighbours, so there the two can differ by float rounding.

Layout of config.teacher_cache.dir:
    cache.json                                  what it was built from (fingerprint) and its shape
    draw0003-proc000of001.array_record          records of draw 3 for process 0, in training order
    draw0003-proc000of001.array_record.json     written last: record count, bytes and sha256
(format: jkd/train/cache_format.py). A shard without its .json is unfinished: building rewrites it
(a kill, a full disk), reading refuses it. Draw e visits floor(N / B) batches of a permutation of the N training examples drawn from
(seed, e) (the remainder is left out of that draw, as the live stream's epochs do not); every
process writes its own slice of each batch. Reading concatenates a process's draws 0..E-1 and
cycles: step s reads records [s B_local, (s + 1) B_local) modulo their number, so epochs beyond E
reuse draw 0, 1, ... in the stored order.

KD from top-k (FKD's "marginal smoothing"): the k stored log-probabilities (at T = 1) keep their
values; the remaining mass 1 - sum(top-k) is spread evenly over the other K - k classes. The result
is a full [K] log-probability vector that every logit method (hinton, hard, dkd, nkd, dist, fm, DeiT)
reads like teacher logits; with k = K it is the teacher's log_softmax. At a KD temperature T != 1 the
method tempers this vector, which differs from FKD (it smooths after tempering at its generation
temperature, default 1): the tail stays flat, so at T > 1 it holds more mass than the live teacher's
tempered tail and loses its ranking (K = 10, k = 1: KL to the live target 0.005 at T = 1, 0.044 at
T = 4 in one example). docs/RESULTS.md measures the accuracy at the quickstart's T = 4.
Feature KD needs the teacher's intermediates and cannot read a cache.

Several runs may read one cache (students, KD settings); runs of different seeds that read one cache
share its data order and augmentation draws, so build one cache per seed for seed statistics.
Multi-process: every process writes and reads its own shards in one directory on a shared
filesystem (process 0 writes cache.json); a build or read stops on every process when one fails.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jkd import rundir, sharding
from jkd.data.augment import draw_views, views_from_records
from jkd.errors import ConfigError
from jkd.train.cache_format import (CACHE_VERSION, decode_values, encode_values, record_dtype, shard_complete,
                                   shard_name, verify_shard, write_shard)
from jkd.train.state import apply_model
from jkd.train.step import teacher_inputs

# ------------------------------------------------------------------------ what a cache is of

def params_digest(params) -> str:
    """sha256 of a parameter pytree's bytes (shapes and dtypes included); for teachers split over
    several hosts, of per-leaf sums rounded to 6 significant digits (what every host can compute: a
    weaker check, and a small reduction is compiled for it before the cache is checked)."""
    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
        h.update(f"{path}{leaf.shape}{leaf.dtype}".encode())
        if getattr(leaf, "is_fully_addressable", True):
            h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
        else:
            x = leaf.astype(jnp.float32)
            h.update(" ".join(f"{float(v):.6g}" for v in jax.jit(lambda a: jnp.stack(
                [a.sum(), (a * a).sum(), jnp.abs(a).max()]))(x)).encode())
    return h.hexdigest()


def examples_digest(data, n: int = 64) -> str:
    """sha256 of n evenly spaced training examples (preprocessed images and labels) by position: another
    dataset, data_dir, split, class subset or preprocessing behind the same config fields changes it."""
    if data.train_examples is None:
        return ""
    ex = data.train_examples(np.unique(np.linspace(0, data.num_train - 1, n).astype(np.int64)))
    h = hashlib.sha256(np.ascontiguousarray(ex["image"], np.float32).tobytes())
    h.update(np.ascontiguousarray(ex["label"], np.int64).tobytes())
    return h.hexdigest()


def fingerprint(config, teachers: tuple, data, augment_cfg) -> dict:
    """What a cache's records depend on: the teachers (spec, input and parameter digest), the training
    examples and their preprocessing, the augmentation, classes, k and value dtype. A reader must match
    all of it; a build resuming a cache also its draws, batch size, seed and process count (build_shape)."""
    d = config.data
    return {
        "teachers": [{"model": t[0].to_json(), "input": repr(t[3]) if len(t) > 3 else None,
                      "params_sha256": params_digest(t[2])} for t in teachers],
        "data": {"name": d.name, "train_split": d.get("train_split", "train"), "image_size": int(d.image_size),
                 "channels": int(d.channels), "mean": repr(d.mean), "std": repr(d.std),
                 "exclude_classes": [int(c) for c in data.excluded_classes], "num_train": int(data.num_train),
                 "examples_sha256": examples_digest(data)},
        "augment": {"crop_scale": None if augment_cfg.crop_scale is None else [float(v) for v in augment_cfg.crop_scale],
                    "flip": bool(augment_cfg.flip), "mixup_alpha": float(augment_cfg.mixup_alpha)},
        "num_classes": int(data.num_classes),
        "top_k": top_k(config, data.num_classes),
        "dtype": config.teacher_cache.dtype,
        "process_count": jax.process_count(),
    }


def top_k(config, num_classes: int) -> int:
    """config.teacher_cache.top_k resolved (0 = every class); ConfigError above num_classes."""
    k = int(config.teacher_cache.top_k)
    if k > num_classes:
        raise ConfigError(f"config.teacher_cache.top_k: {k} exceeds the {num_classes} classes (0 = all)")
    return k or num_classes


def build_shape(config, data) -> dict:
    """The cache's draws, batch size, seed and batches per draw (config.teacher_cache.draws 0 = as many
    draws as config.steps needs at config.batch_size, so that no draw is reused)."""
    batch = int(config.batch_size)
    per_draw = data.num_train // batch
    if per_draw < 1:
        raise ConfigError(f"config.batch_size: {batch} exceeds the {data.num_train} training examples")
    draws = int(config.teacher_cache.draws) or math.ceil(config.steps / per_draw)
    seed = config.teacher_cache.seed if config.teacher_cache.seed is not None else config.seed
    return {"draws": draws, "batch_size": batch, "batches_per_draw": per_draw, "seed": int(seed)}


def check_config(config, objectives: dict) -> None:
    """What the students ask of the cache (ConfigError naming the field), before anything is loaded;
    dtype and generations are checked with the distill config (jkd.train.distill.check_config)."""
    feature = [n for n, o in objectives.items() if o.feature != "none"]
    if feature:
        raise ConfigError(f"config.teacher_cache.dir: students {feature} use feature KD "
                          f"(config.feature_kd.method), which needs the teacher's intermediates; the cache "
                          f"stores logits only. Distil them live (teacher_cache.dir='').")


def _mismatch(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two fingerprints."""
    out = []
    for key in sorted(set(expected) | set(found)):
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _mismatch(a, b, f"{prefix}{key}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a and isinstance(a[0], dict):
            for i, (x, y) in enumerate(zip(a, b)):  # teachers: name the teacher and its field
                out += _mismatch(x, y, f"{prefix}{key}.{i}.")
        elif a != b:
            out.append(f"{prefix}{key} (cache: {_short(b)}, this run: {_short(a)})")
    return out


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


def check_manifest(cache_dir: str, expected: dict, shape: dict | None = None) -> dict:
    """The cache's cache.json, checked against this run's fingerprint (and, when building, its build
    shape): ConfigError naming every field that differs. {} when the directory has no cache.json."""
    path = os.path.join(cache_dir, "cache.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config.teacher_cache.dir: {path} is unreadable ({e}); delete the directory "
                          f"to rebuild the cache") from None
    if manifest.get("version") != CACHE_VERSION:
        raise ConfigError(f"config.teacher_cache.dir: {path} has cache version {manifest.get('version')}, "
                          f"this jkd reads version {CACHE_VERSION}; rebuild it")
    bad = _mismatch(expected, manifest["fingerprint"])
    if shape is not None:
        bad += _mismatch(shape, manifest["shape"], "teacher_cache.")
    if bad:
        raise ConfigError(f"config.teacher_cache.dir: {cache_dir} was built from something else: "
                          + "; ".join(bad) + ". Use another teacher_cache.dir or delete this one to rebuild.")
    return manifest


# ---------------------------------------------------------------------------------- building

def make_teacher_topk(teacher_graphdefs: tuple, teacher_views: tuple, *, k: int, crop: bool, flip: bool,
                      mixup: bool):
    """jit-able (teacher_params, batch) -> (logp [B, M, k] f32, classes [B, M, k] int32): every teacher on
    the batch's cached_views, its top-k log-probabilities at T = 1."""
    
    def topk(teacher_params, batch):
        images = views_from_records(batch, crop=crop, flip=flip, mixup=mixup)
        inputs = teacher_inputs(images, teacher_views, len(teacher_graphdefs))
        logp = jnp.stack([jax.nn.log_softmax(apply_model(g, p, x).astype(jnp.float32))
                          for g, p, x in zip(teacher_graphdefs, teacher_params, inputs)], axis=1)  # [B, M, K]
        values, classes = jax.lax.top_k(logp, k)
        return values, classes.astype(jnp.int32)

    return topk


# compiled as in the live step (and ~50x faster than op by op)
_jit_draw_views = jax.jit(draw_views, static_argnums=(1, 2, 3), static_argnames=("crop_scale", "flip", "mixup_alpha"))


def draw_permutation(shape: dict, draw: int, num_train: int) -> np.ndarray:
    """The order draw `draw` visits the training examples in: a permutation [num_train] of (seed, draw)."""
    return np.random.default_rng([shape["seed"], draw]).permutation(num_train)


def draw_records(shape: dict, draw: int, batch_index: int, data, augment_cfg, perm: np.ndarray | None = None) -> dict:
    """The global batch `batch_index` of draw `draw`: example indices [B], and its view parameters
    (draw_views from a key of (seed, draw, batch)) as record fields [B] (partner fields by position).
    perm: draw_permutation(shape, draw, data.num_train), when the caller holds it."""
    b = shape["batch_size"]
    perm = draw_permutation(shape, draw, data.num_train) if perm is None else perm
    index = perm[batch_index * b:(batch_index + 1) * b]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(shape["seed"]), draw), batch_index)
    h, w, _ = data.image_shape
    crop = None if augment_cfg.crop_scale is None else tuple(float(v) for v in augment_cfg.crop_scale)
    d = jax.device_get(_jit_draw_views(key, b, h, w, crop_scale=crop, flip=bool(augment_cfg.flip),
                                       mixup_alpha=float(augment_cfg.mixup_alpha)))
    box = np.stack([d.top, d.left, d.crop_h, d.crop_w], -1).astype(np.int16)  # integers (crop_boxes)
    return {"index": index, "partner": index[d.partner], "box": box, "partner_box": box[d.partner],
            "flip": d.flip.astype(np.uint8), "partner_flip": d.flip[d.partner].astype(np.uint8),
            "lam": d.lam.astype(np.float32)}


def records_batch(fields: dict, data, *, mixup: bool) -> dict:
    """Record fields (numpy, [n] each) -> the host batch the cached step and the builder take: the examples
    (and under mixup their partners) read by index, with box, flip, lam and any stored teacher fields."""
    ex = data.train_examples(fields["index"])
    batch = {"image": ex["image"], "label": ex["label"], "label_mask": ex["label_mask"],
             "box": fields["box"].astype(np.float32), "flip": fields["flip"].astype(np.int32), "lam": fields["lam"]}
    if mixup:
        px = data.train_examples(fields["partner"])
        batch.update(partner_image=px["image"], partner_label=px["label"], partner_label_mask=px["label_mask"],
                     partner_box=fields["partner_box"].astype(np.float32), partner_flip=fields["partner_flip"].astype(np.int32))
    return batch


def build(config, cache_dir: str, *, teachers: tuple, teacher_params, teacher_views: tuple, data, augment_cfg,
          mesh, desc: str = "teacher cache") -> dict:
    """Write every missing or unfinished shard of this process (resumable); returns the manifest.

    teachers: load_teachers tuples; teacher_params: their params placed on `mesh`; teacher_views: each
    teacher's input from the students' images (compile_steps' teacher_views)."""
    expected, shape = fingerprint(config, teachers, data, augment_cfg), build_shape(config, data)
    if data.train_examples is None:
        raise ConfigError(f"config.teacher_cache.dir: data {config.data.name!r} cannot be read by example index")
    manifest = check_manifest(cache_dir, expected, shape)
    os.makedirs(cache_dir, exist_ok=True)  # every process writes its shards here (a shared filesystem)
    if not manifest:
        manifest = {"version": CACHE_VERSION, "fingerprint": expected, "shape": shape}
        if rundir.is_writer():  # atomic: a kill never leaves a half-written cache.json
            rundir.write_json(cache_dir, "cache.json.tmp", manifest)
            os.replace(os.path.join(cache_dir, "cache.json.tmp"), os.path.join(cache_dir, "cache.json"))
    p_idx, p_cnt = jax.process_index(), jax.process_count()
    b_local = shape["batch_size"] // p_cnt
    local = slice(p_idx * b_local, (p_idx + 1) * b_local)
    k, value_dtype = expected["top_k"], expected["dtype"]
    dtype = record_dtype(len(teachers), k, value_dtype, expected["num_classes"])
    mixup = augment_cfg.mixup_alpha > 0
    batch_sh = sharding.batch_sharding(mesh)
    topk = jax.jit(make_teacher_topk(tuple(t[1] for t in teachers), teacher_views, k=k,
                                     crop=augment_cfg.crop_scale is not None, flip=bool(augment_cfg.flip), mixup=mixup),
                   out_shardings=(batch_sh, batch_sh))
    per_shard = shape["batches_per_draw"] * b_local
    done = np.array([shard_complete(os.path.join(cache_dir, shard_name(e, p_idx, p_cnt)), per_shard)
                     for e in range(shape["draws"])])
    # every process runs the teacher on every batch it redoes (collectives): redo a draw that any lacks
    done = multihost_utils.process_allgather(done).reshape(p_cnt, -1).all(0) if p_cnt > 1 else done
    todo = [e for e in range(shape["draws"]) if not done[e]]
    bar = tqdm(total=len(todo) * shape["batches_per_draw"], desc=desc, dynamic_ncols=True, leave=False,
               disable=not rundir.is_writer() or not config.progress)
    for e in todo:
        t0, records = time.time(), []
        perm = draw_permutation(shape, e, data.num_train)
        for j in range(shape["batches_per_draw"]):
            fields = {n: v[local] for n, v in draw_records(shape, e, j, data, augment_cfg, perm).items()}
            batch = sharding.put_batch(records_batch(fields, data, mixup=mixup), mesh)
            # this process's rows, in the order put_batch assembled them
            values, classes = (np.asarray(x) for x in multihost_utils.global_array_to_host_local_array(
                topk(teacher_params, batch), mesh, (batch_sh.spec, batch_sh.spec)))
            rec = np.zeros(b_local, dtype)
            for name in ("index", "partner", "box", "partner_box", "flip", "partner_flip", "lam"):
                rec[name] = fields[name]
            rec["logp"] = encode_values(values, value_dtype)
            rec["classes"] = classes
            records += [r.tobytes() for r in rec]
            bar.update(1)
        write_shard(os.path.join(cache_dir, shard_name(e, p_idx, p_cnt)), records, time.time() - t0)
    bar.close()
    return {"teacher_cache": cache_stats(cache_dir, manifest)}


def cache_stats(cache_dir: str, manifest: dict) -> dict:
    """This process's finished shards summed: records, bytes (per record too), build seconds, and the
    cache's draws, k and dtype."""
    p_idx, p_cnt = jax.process_index(), jax.process_count()
    infos = []
    for e in range(manifest["shape"]["draws"]):
        path = os.path.join(cache_dir, shard_name(e, p_idx, p_cnt))
        if os.path.exists(path + ".json"):
            with open(path + ".json") as f:
                infos.append(json.load(f))
    records, nbytes = sum(i["records"] for i in infos), sum(i["bytes"] for i in infos)
    return {"dir": os.path.abspath(cache_dir), "draws": manifest["shape"]["draws"], "shards": len(infos),
            "records": records, "bytes": nbytes, "bytes_per_record": nbytes / max(records, 1),
            "build_seconds": sum(i.get("build_seconds", 0.0) for i in infos),
            "top_k": manifest["fingerprint"]["top_k"], "dtype": manifest["fingerprint"]["dtype"]}


# ---------------------------------------------------------------------------------- reading

def open_reader(config, cache_dir: str, *, teachers: tuple, data, augment_cfg):
    """(train_batch(step) -> host batch, info dict) over this process's shards, after checking the cache
    against this run (fingerprint) and every shard (present, finished, checksum): ConfigError otherwise,
    before anything is compiled. The batch is records_batch's plus 'teacher_logp' / 'teacher_classes'
    [B_local, M, k]."""
    import grain

    expected = fingerprint(config, teachers, data, augment_cfg)
    manifest = check_manifest(cache_dir, expected)
    if not manifest:
        raise ConfigError(f"config.teacher_cache.dir: {cache_dir} holds no cache (no cache.json); build it first "
                          f"with the same config and --config.teacher_cache.build=True")
    shape = manifest["shape"]
    p_idx, p_cnt = jax.process_index(), jax.process_count()
    per_shard = shape["batches_per_draw"] * (shape["batch_size"] // p_cnt)
    paths = [os.path.join(cache_dir, shard_name(e, p_idx, p_cnt)) for e in range(shape["draws"])]
    problem = None
    try:
        for path in paths:
            verify_shard(path, per_shard)
    except ConfigError as e:
        problem = e
    if p_cnt > 1:  # one process's bad shard stops every process (not a hang at the first collective)
        bad = multihost_utils.process_allgather(np.array([problem is not None])).reshape(-1)
        if problem is None and bad.any():
            raise ConfigError(f"config.teacher_cache.dir: processes {np.flatnonzero(bad).tolist()} found a missing, "
                              f"unfinished or corrupt shard (their error names it)")
    if problem is not None:
        raise problem
    source = grain.sources.ArrayRecordDataSource(paths)
    total, b_local = len(source), config.batch_size // p_cnt
    value_dtype = expected["dtype"]
    dtype = record_dtype(len(teachers), expected["top_k"], value_dtype, expected["num_classes"])
    mixup = augment_cfg.mixup_alpha > 0

    def train_batch(step: int) -> dict:
        positions = (int(step) * b_local + np.arange(b_local)) % total
        # one record at a time: grain's threaded __getitems__ costs twice as much for a batch this size
        rec = np.frombuffer(b"".join(source[int(i)] for i in positions), dtype)
        batch = records_batch({n: rec[n] for n in rec.dtype.names}, data, mixup=mixup)
        batch["teacher_logp"] = decode_values(rec["logp"], value_dtype)
        batch["teacher_classes"] = rec["classes"].astype(np.int32)
        return batch

    info = {"dir": os.path.abspath(cache_dir), "records": total, "draws": shape["draws"],
            "top_k": expected["top_k"], "dtype": value_dtype, "bytes": sum(os.path.getsize(p) for p in paths),
            "epochs_read": config.steps * b_local / total}
    return train_batch, info
