"""Ensemble, knowledge distillation and self-distillation on multi-view data (Allen-Zhu & Li, ICLR 2023).

Command (2 CPU cores, ~1.5 minutes for one seed: net ~35 s, rf ~12 s, ntk ~40 s):
    python -m jkd.main --config configs/theory/multiview.py --workdir /tmp/jkd_theory
Over seeds and parameters (resumable; table.md and plots/ in the sweep workdir):
    python -m jkd.sweep --config configs/theory/multiview.py --workdir /tmp/jkd_theory_main --sweep 'seed=0:5'
    python -m jkd.sweep --config configs/theory/multiview.py --workdir /tmp/jkd_theory_mu \
        --set variants=net --sweep 'data.mu=0.1,0.2,0.3' --sweep 'seed=0:5'      # ~9 minutes
Expected (5 seeds, docs/RESULTS.md; single-view test accuracy): net single models ~76% (100% train and
~100% multi-view test; each learns one view for most classes), ensemble of 5 ~98%, KD from the
ensemble ~88%, self-distillation ~86%, one 5x wider model ~72%; the jointly trained average ~95%
(does not reproduce the paper's "does not help", see docs/THEORY.md). rf and ntk: the ensemble and
the trained average help, KD and self-distillation do not. These defaults were tuned on seeds 0-1;
on seeds 100-104 (never used for tuning): single 74.3%, ensemble 95.6%, KD 85.9%, self-distillation
81.7%. The KD gain is a d = 256 result: with the same noise norm at d >= 1024 it fades (RESULTS.md).

`get_config('fast')`: the default without the rf / ntk contrasts (variants = net), notebook 02's FAST
setting, 40-50 s of CPU time per seed on 2 CPU cores. Over seeds 0-4:
    python -m jkd.sweep --config configs/theory/multiview.py:fast --workdir /tmp/jkd_theory_fast --sweep 'seed=0:5'
single-view test accuracy, seeds 0 / 1 / 2 / 3 / 4: single 79.6 / 72.9 / 73.1 / 76.2 / 81.0, ensemble
99.0 / 94.0 / 99.6 / 99.7 / 99.1, KD 89.1 / 85.4 / 87.4 / 89.4 / 90.1, self-distillation 87.0 / 84.2 /
86.6 / 86.1 / 87.0: ensemble > KD > self-distillation > single on every seed, but KD leads
self-distillation by only 0.8-3.3 points.
`get_config('tiny')`: a seconds-sized setting for tests and smoke runs (k = 4; tests/test_theory.py
checks that the ensemble beats the single models on single-view data there). Too small for KD to
help: on seeds 0-2 the KD students score below the single models on single-view data.
Every field is described by the comment next to it; the data regime is explained in docs/THEORY.md.
"""
import ml_collections

from jkd.config import writers_config


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.trainer = "theory"
    c.seed = 0                      # data (unless data.seed >= 0) and every model init
    c.progress = True               # tqdm bars and the printed table
    c.writers = writers_config()    # TensorBoard event files beside metrics.jsonl (docs/LOGGING.md)
    c.variants = "net,rf,ntk"       # models: net (analysed), rf (random features), ntk (linearised net)
    c.methods = "single,ensemble,kd,self_distill,average,wide"
    c.log_every = 100               # loss to metrics.jsonl (also the length of one compiled scan)

    c.data = ml_collections.ConfigDict()
    c.data.seed = -1                # -1: follow config.seed
    c.data.num_classes = 10         # k
    c.data.dim = 256                # d (>= 2k: the 2k views are orthonormal)
    c.data.num_patches = 16         # P
    c.data.view_patches = 2         # patches each carried feature occupies (C_p)
    c.data.num_train = 300          # training samples (mu of them single-view on average)
    c.data.num_test = 1000          # per test set (one all-multi-view, one all-single-view)
    c.data.mu = 0.2                 # probability that a sample is single-view
    c.data.view_strength = 1.0      # sum of a present view's coefficients (both views, multi-view)
    c.data.rho = 0.1                # the weak view of a single-view sample
    c.data.off_class_prob = 0.1     # each view of every other class appears with this probability
    c.data.off_class_strength = 0.4         # ... at this strength in multi-view samples (paper: <= 0.4)
    c.data.off_class_strength_single = 0.1  # ... and this in single-view samples
    c.data.feature_noise = 0.0      # uniform [0, feature_noise] of every view in every patch
    c.data.noise_std = 0.125        # Gaussian patch noise per coordinate (norm ~ noise_std sqrt(d) = 2)
    c.data.noise_norm = 0.0         # > 0: noise_std = noise_norm / sqrt(d), the same noise norm at any d (d sweeps)
    c.data.noise_orthogonal = True  # remove the noise's component along the views (large-d limit)

    c.net = ml_collections.ConfigDict()     # the analysed net (variant 'net') and its optimiser: plain (S)GD
    c.net.channels = 2              # m channels per class
    c.net.q = 3                     # smoothed ReLU power (>= 3)
    c.net.varrho = 2.0              # smoothed ReLU threshold: polynomial below, linear above
    c.net.init_std = 0.005          # sigma_0: small init, so that learning is a race between views
    c.net.steps = 1000
    c.net.lr = 30.0                 # large but stable: gradients are means over N of O(1) terms
    c.net.batch_size = 0            # 0 = full-batch GD; > 0: SGD minibatch (for rf and ntk too)

    c.rf = ml_collections.ConfigDict()      # random features: frozen first layer, trained readout
    c.rf.features = 400             # M random smoothed-ReLU features
    c.rf.init_std = 1.0             # std of the frozen first-layer weights (features in their active range)
    c.rf.lr = 30.0
    c.rf.steps = 1000

    c.ntk = ml_collections.ConfigDict()     # the net linearised at a (larger) init
    c.ntk.init_std = 0.25           # large enough that ReLU~'(<w0, x>) is not ~0
    c.ntk.lr = 10.0
    c.ntk.steps = 1000

    c.ensemble = ml_collections.ConfigDict()
    c.ensemble.size = 5             # L independently initialised single models (and average members)
    c.ensemble.average = "logits"   # 'logits' or 'probs' (KD target: the members' mean softmax at kd.temperature)

    c.kd = ml_collections.ConfigDict()
    c.kd.num_students = 5           # KD students (from the ensemble) and self-distilled students
    c.kd.temperature = 4.0          # Hinton T (T^2 KL)
    c.kd.weight = 0.9               # loss = weight * KD + (1 - weight) * CE(labels)

    c.probe = ml_collections.ConfigDict()
    c.probe.view_threshold = 0.5    # view learned: correlation >= this x the model's largest (and >= varrho)

    if arg == "fast":  # the default regime, the analysed net only: the effect in under a minute
        c.variants = "net"
        c.progress = False
    elif arg == "tiny":  # seconds: k = 4 classes, one patch per feature, 100 training samples
        c.data.update(dict(num_classes=4, dim=64, num_patches=8, view_patches=1, num_train=100, num_test=200,
                           noise_std=0.2))
        c.rf.features = 64
        c.net.steps = c.rf.steps = c.ntk.steps = 300
        c.ensemble.size = 4
        c.kd.num_students = 2
        c.progress = False
    elif arg is not None:
        raise ValueError(f"configs/theory/multiview.py: unknown arg {arg!r} (known: fast, tiny)")
    return c
