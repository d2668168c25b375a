"""Teacher-output cache (FKD): the quickstart's teacher and students, distilled live and from caches of
the teacher's top-k log-probabilities on stored views (jkd/train/teacher_cache.py, docs/PERF.md).

Command (from the repo root, 2 CPU cores):
    python -m jkd.main --config configs/teacher_cache.py --workdir /tmp/jkd_cache

Runs (<workdir>/...): teacher (vit_pico4, as the quickstart's), kd_live (Hinton KD into vit_atto4 and
convnext_zepto with a live teacher), then per k in cache_top_ks: cache_k<k> (every view the students
will see, scored once by the teacher: 39 draws of the 1,347 training digits at batch 64) and
kd_cached_k<k> (the same KD reading it; both students read one cache). results.md: accuracy per
run, train-loop seconds per epoch, the cache's build seconds and bytes per example per epoch.
Expected: about 10 minutes on 2 CPU cores; measured tables (3 seeds) in docs/RESULTS.md.

`configs/teacher_cache.py:bench` (docs/PERF.md, the speed-up): the ViT student alone (teacher 25x its
FLOPs), 400 steps, k = 5 only:
    python -m jkd.main --config configs/teacher_cache.py:bench --workdir /tmp/jkd_cache_bench

Build a cache alone and distil from it in another run (any distill config):
    python -m jkd.main --config configs/digits_distill.py --workdir W --config.teacher.checkpoint=T \
        --config.teacher_cache.dir=/tmp/cache --config.teacher_cache.build=True
    python -m jkd.main --config configs/digits_distill.py --workdir W --config.teacher.checkpoint=T \
        --config.teacher_cache.dir=/tmp/cache
"""
from jkd.config import base_config, model_config


def get_config(arg=None):
    c = base_config()
    c.trainer = "teacher_cache"
    del c.model                        # each stage's model comes from teacher.model / students
    c.data.image_size = 16             # the quickstart's setting: 16 px digits, 10% of labels for the students
    c.data.channels = 1
    c.data.labelled_fraction = 0.1
    c.batch_size = 64
    c.eval_batch_size = 256
    c.steps = 800                      # every student run
    c.teacher.steps = 1000
    c.teacher.model = model_config("vit_pico4")   # 675,562 params
    c.students = dict(
        vit=model_config("vit_atto4"),                          # 26,922 params
        convnext=model_config("convnext_zepto", stem_stride=2),  # 233,114 params
    )
    c.kd_methods = "hinton"            # one method, live and cached
    c.cache_top_ks = "1,3,5,0"         # one cache and one cached run per k; 0 = every class (the live targets)
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 50
    c.log_every = 50
    c.eval_every = 0
    c.checkpoint_every = 500
    if arg == "bench":  # the speed benchmark (docs/PERF.md): one 25x-smaller student, one cache (k = 5)
        c.students = dict(vit=model_config("vit_atto4"))
        c.cache_top_ks = "5"
        c.steps = 400
    elif arg is not None:
        raise ValueError(f"configs/teacher_cache.py: unknown arg {arg!r} (known: bench)")
    return c
