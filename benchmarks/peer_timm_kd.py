"""The peer of `python -m jkd.bench`: jkd's knowledge-distillation train step in PyTorch + timm.

    python benchmarks/peer_timm_kd.py --teacher vit_small_patch16_224 --students vit_tiny_patch16_224 \
        --batch 32 --image 64 --classes 1000 --dtype float32 --device cpu --modes eager,compile
    python -m jkd.bench --teacher vit_s16 --students vit_ti16 --batch 32 --image 64 --dtype float32 --peer
        (jkd.bench runs this script first, with its own shapes and timing protocol, and prints ratios)

The step is the work jkd's distill step does with jkd.config.base_config() defaults, so that an
img/s ratio compares implementations, not workloads:
  teacher forward under torch.no_grad() (eval mode: no dropout), once per step for all students;
  per student: forward, loss = 0.9 * T^2 * KL(softmax(t/T) || softmax(s/T)) + 0.1 * CE(labels) at
  T = 4 (Hinton KD, jkd.losses.hinton_kd with the 'cifar' setting's defaults), backward,
  global-norm gradient clipping at 1.0, AdamW (lr 1e-3, betas 0.9/0.999, weight decay 0.05 on
  tensors with ndim >= 2 only, as jkd.train.state.make_optimizer). jkd's learning rate follows a
  warm-up cosine schedule; here it is constant (one scalar per step: no measurable work).
  Data: one random batch on the device (images [B, C, H, W] ~ N(0, 1), labels uniform), as jkd.bench.
  dtype float32: no autocast; bfloat16: torch.autocast over the forwards (params stay fp32, as jkd's
  `config.dtype`), losses in fp32.

Modes: 'eager' (AdamW fused where the device supports it) and 'compile' (torch.compile of the whole
step, optimizer included, default mode). A mode that fails (torch.compile needs a C++ compiler on CPU,
Triton on GPU) prints a record with "error" instead of a time, and the next mode still runs.

Timing protocol (the same as jkd.bench's): --warmup single steps (torch.compile's compilation happens
in the first; its time is `compile_s`), then --repeats blocks of --steps steps, each block closed by
torch.cuda.synchronize() on a GPU; step_ms = median block time / steps, img_per_s = batch / step.
`host_cpu_ms` is the process CPU time per step (all threads), steadier than wall time on a shared
CPU machine.

One device: on a GPU, cuda:0 only (jkd.bench --peer uses one device too unless --devices says
otherwise). On CPU a "device" is the set of cores the process may run on: jax's single CPU device
runs XLA's thread pool over all of them, so this script sets torch.set_num_threads to the same
count (len(os.sched_getaffinity(0)); --threads overrides) and both sides use the same cores.

Output: one JSON line per mode on stdout, e.g.
  {"peer": "torch_eager", "teacher": "vit_small_patch16_224", "students": "vit_tiny_patch16_224",
   "batch": 32, "image": 64, "channels": 3, "classes": 1000, "dtype": "float32", "backend": "cpu",
   "devices": 1, "threads": 2, "img_per_s": ..., "step_ms": ..., "teacher_params": 21981544,
   "student_params": [5682856], ...}
jkd.bench pairs these with its own record field by field (jkd.bench_peer.pair_mismatch).
torch and timm are imported after argument parsing, so `--help` works without them.
"""
from __future__ import annotations

import argparse
import json
import os
import time

KD_TEMPERATURE, KD_WEIGHT = 4.0, 0.9  # jkd's Hinton defaults (cifar setting): 0.9 * T^2 KL + 0.1 CE
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.999), 0.05, 1.0  # jkd.config.base_config().optimizer


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python benchmarks/peer_timm_kd.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="vit_small_patch16_224", help="timm model name (one teacher)")
    ap.add_argument("--students", default="vit_tiny_patch16_224",
                    help="comma-separated timm model names, all trained on one teacher forward per step")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image", type=int, default=64, help="image side in pixels (ViTs are built for it)")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype (autocast)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = cuda if available")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = the cores this process may use)")
    ap.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks (the median is reported)")
    return ap.parse_args(argv)


def build(args, device):
    """(teacher, students, x [B, C, H, W], y [B]) on `device`, random init (seeded)."""
    import timm
    import torch

    torch.manual_seed(0)

    def create(name):
        # ViTs take the image size at construction (position embeddings); ConvNeXts need none.
        kw = {"img_size": args.image} if name.startswith(("vit", "deit")) else {}
        return timm.create_model(name, num_classes=args.classes, in_chans=args.channels, **kw).to(device)

    teacher = create(args.teacher).eval().requires_grad_(False)
    students = [create(n).train() for n in args.students.split(",")]
    x = torch.randn(args.batch, args.channels, args.image, args.image, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    return teacher, students, x, y


def make_optimizer(student, fused: bool):
    """AdamW with weight decay on ndim >= 2 tensors only (jkd's decay mask)."""
    import torch

    params = [p for p in student.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, **({"fused": True} if fused else {}))


def make_step(teacher, students, opts, x, y, dtype, device):
    """One KD step for every student on the batch (x, y); returns the students' losses [n] (a tensor)."""
    import torch
    import torch.nn.functional as F

    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")  # noqa: E731
    t = KD_TEMPERATURE

    def step():
        with torch.no_grad(), autocast():
            teacher_logp = F.log_softmax(teacher(x).float() / t, -1)
        losses = []
        for student, opt in zip(students, opts):
            with autocast():
                student_logits = student(x).float()
            student_logp = F.log_softmax(student_logits / t, -1)
            kd = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1).mean() * t ** 2
            loss = KD_WEIGHT * kd + (1 - KD_WEIGHT) * F.cross_entropy(student_logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), GRAD_CLIP)
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    return step


def time_mode(args, mode: str, device) -> dict:
    """Build fresh models for `mode`, warm up, time the blocks; the mode's JSON record."""
    import numpy as np
    import torch

    teacher, students, x, y = build(args, device)
    # Eager: the fused AdamW kernel where supported; compile: the plain one, which inductor fuses itself.
    opts = [make_optimizer(s, fused=mode == "eager") for s in students]
    step = make_step(teacher, students, opts, x, y, args.dtype, device)
    if mode == "compile":
        step = torch.compile(step)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rec = {"teacher_params": sum(p.numel() for p in teacher.parameters()),
           "student_params": [sum(p.numel() for p in s.parameters()) for s in students]}
    t0 = time.perf_counter()
    losses = step()
    sync()
    rec["compile_s"] = round(time.perf_counter() - t0, 2)  # the first step: compilation (or eager warm-up)
    for _ in range(args.warmup - 1):
        step()
    sync()
    wall, cpu = [], []
    for _ in range(args.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(args.steps):
            losses = step()
        sync()
        wall.append((time.perf_counter() - t0) / args.steps)
        cpu.append((time.process_time() - c0) / args.steps)
    sec = float(np.median(wall))
    losses = [float(v) for v in losses.float().cpu()]
    return {**rec, "img_per_s": round(args.batch / sec, 1), "step_ms": round(1e3 * sec, 3),
            "step_ms_blocks": [round(1e3 * w, 3) for w in wall],
            "host_cpu_ms": float(f"{1e3 * float(np.median(cpu)):.4g}"), "losses": losses,
            "finite": bool(np.all(np.isfinite(losses)))}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    import timm
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    threads = args.threads or len(os.sched_getaffinity(0))
    if device.type == "cpu":
        torch.set_num_threads(threads)
    common = {"teacher": args.teacher, "students": args.students, "batch": args.batch, "image": args.image,
              "channels": args.channels, "classes": args.classes, "dtype": args.dtype,
              "backend": "gpu" if device.type == "cuda" else "cpu", "devices": 1,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "warmup": args.warmup, "steps": args.steps,
              "repeats": args.repeats, "torch": torch.__version__, "timm": timm.__version__}
    records = []
    for mode in args.modes.split(","):
        rec = {"peer": f"torch_{mode}", **common}
        try:
            if mode not in ("eager", "compile"):
                raise ValueError(f"--modes: unknown mode {mode!r} (known: eager, compile)")
            rec.update(time_mode(args, mode, device))
        except Exception as e:  # a compile failure is a result to report, not a crash
            rec["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        records.append(rec)
        print(json.dumps(rec), flush=True)
    return records


if __name__ == "__main__":
    main()
