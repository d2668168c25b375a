"""The PyTorch + timm peer of `python -m jkd.bench`: run it, pair its records with jkd's, tabulate.

    python -m jkd.bench --teacher vit_s16 --students vit_ti16 --batch 32 --image 64 --dtype float32 --peer

`--peer` with no path runs benchmarks/peer_timm_kd.py of the repository this package sits in (found
from this file, not from the working directory) in a subprocess, with jkd's shapes, dtype and timing
protocol (--warmup, --steps, --repeats), before JAX takes the device. A ratio jkd / peer is printed
only when both records describe the same work (`pair_mismatch`): the same model pair (timm names and
parameter counts), batch, image size, channels, classes, dtype, backend and device count (and, on
CPU, the same number of threads); otherwise a `no_ratio` record says why. torch and timm are never
imported here: the peer script is the only place that needs them.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from jkd.errors import ConfigError

PEER_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peer_timm_kd.py"

# timm names of the jkd models the peer script builds with the same shapes (ViTs at any image size:
# the script passes img_size; ConvNeXts with timm's stem stride 4, jkd's default).
TIMM_NAMES = {
    "vit_ti16": "vit_tiny_patch16_224", "vit_s16": "vit_small_patch16_224", "vit_b16": "vit_base_patch16_224",
    "vit_l16": "vit_large_patch16_224", "vit_h14": "vit_huge_patch14_224",
    "convnext_atto": "convnext_atto", "convnext_femto": "convnext_femto", "convnext_pico": "convnext_pico",
    "convnext_nano": "convnext_nano", "convnext_t": "convnext_tiny", "convnext_s": "convnext_small",
    "convnext_b": "convnext_base", "convnext_l": "convnext_large",
}

# Fields that must be equal in a jkd record and a peer record for their img/s to be comparable.
SAME_WORK = ("batch", "image", "channels", "classes", "dtype", "backend", "devices")


def timm_name(jkd_name: str) -> str:
    """The timm model with jkd_name's architecture, for the peer script."""
    if jkd_name not in TIMM_NAMES:
        raise ConfigError(f"--peer: no timm name known for {jkd_name!r}; pass --peer-teacher/--peer-students "
                          f"(known: {', '.join(sorted(TIMM_NAMES))})")
    return TIMM_NAMES[jkd_name]


def peer_names(args) -> tuple[str, str]:
    """(timm teacher, comma-separated timm students) for this run: --peer-teacher/--peer-students or mapped."""
    if "," in args.teacher and not args.peer_teacher:
        raise ConfigError(f"--peer: the peer step has one teacher, got --teacher {args.teacher!r}")
    teacher = args.peer_teacher or timm_name(args.teacher)
    students = args.peer_students or ",".join(timm_name(n) for n in args.students.split(","))
    return teacher, students


def peer_script(path: str) -> str:
    """The peer script to run: `path` as given, checked to exist (ConfigError naming the fix)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--peer: no peer script at {path} (it is benchmarks/peer_timm_kd.py of a jkd clone; "
                          f"an installed package does not ship it: pass --peer PATH)")
    return path


def peer_command(args) -> list[str]:
    """The peer's command line for this run's shapes and timing protocol."""
    teacher, students = peer_names(args)
    return [args.peer_python or sys.executable, peer_script(args.peer), "--teacher", teacher,
            "--students", students, "--batch", str(args.batch), "--image", str(args.image),
            "--channels", str(args.channels), "--classes", str(args.classes), "--dtype", args.dtype,
            "--device", args.peer_device, "--modes", args.peer_modes, "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--repeats", str(args.repeats)]


def run_peer(args) -> list[dict]:
    """Run the peer script; its JSON lines tagged kind='peer' (a mode that failed: 'peer_error')."""
    cmd = peer_command(args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout)
    except subprocess.TimeoutExpired as e:  # report it and still measure jkd
        return [{"kind": "peer_error", "returncode": None, "cmd": cmd, "stderr_tail": f"timeout after {e.timeout} s"}]
    records = []
    for line in proc.stdout.splitlines():
        if line.strip().startswith("{"):
            rec = json.loads(line)
            records.append({"kind": "peer_error" if "error" in rec else "peer", **rec})
    if proc.returncode != 0 or not records:
        records.append({"kind": "peer_error", "returncode": proc.returncode, "cmd": cmd,
                        "stderr_tail": proc.stderr[-2000:]})
    return records


def pair_mismatch(jkd_rec: dict, peer_rec: dict) -> str | None:
    """Why the two records did not time the same work (None: they did, a ratio means something).

    jkd_rec: a kind='jkd' record (timm_teacher/timm_students when the run named them, else the
    TIMM_NAMES mapping); peer_rec: a peer script line. Parameter counts are compared where both
    records carry them (they catch a different architecture behind the same name, e.g. a stem)."""
    if "img_per_s" not in peer_rec:
        why = peer_rec.get("error") or f"exit {peer_rec.get('returncode')}: {peer_rec.get('stderr_tail', '')[-300:]}"
        return f"the peer's {peer_rec.get('peer', 'run')} has no time ({why})"
    pair = (jkd_rec.get("timm_teacher") or TIMM_NAMES.get(jkd_rec["teacher"], jkd_rec["teacher"]),
            jkd_rec.get("timm_students") or ",".join(TIMM_NAMES.get(n, n) for n in jkd_rec["students"].split(",")))
    if pair != (peer_rec.get("teacher"), peer_rec.get("students")):
        return (f"different models: jkd {jkd_rec['teacher']} -> {jkd_rec['students']} (timm: {pair[0]} -> "
                f"{pair[1]}), peer {peer_rec.get('teacher')} -> {peer_rec.get('students')}")
    for field in ("teacher_params", "student_params"):
        if field in jkd_rec and field in peer_rec and jkd_rec[field] != peer_rec[field]:
            return f"different architectures: {field} jkd {jkd_rec[field]}, peer {peer_rec[field]}"
    fields = SAME_WORK + (("threads",) if jkd_rec.get("backend") == "cpu" else ())
    for field in fields:
        if field not in jkd_rec or field not in peer_rec:
            return f"the {'peer' if field in jkd_rec else 'jkd'} record has no {field!r}"
        if jkd_rec[field] != peer_rec[field]:
            return f"different {field}: jkd {jkd_rec[field]!r}, peer {peer_rec[field]!r}"
    return None


def ratio_record(jkd_rec: dict, peer_rec: dict) -> dict:
    """kind='ratio' (jkd img/s over the peer's, and the peer's CPU time per step over jkd's) when
    the records pair, else kind='no_ratio' with `why`."""
    head = {"jkd_over": peer_rec.get("peer"), "teacher": jkd_rec["teacher"], "students": jkd_rec["students"]}
    why = pair_mismatch(jkd_rec, peer_rec)
    if why:
        return {"kind": "no_ratio", **head, "why": why}
    cpu = (jkd_rec.get("host_cpu_ms"), peer_rec.get("host_cpu_ms"))
    return {"kind": "ratio", **head, **{f: jkd_rec[f] for f in SAME_WORK},
            "ratio": round(jkd_rec["img_per_s"] / peer_rec["img_per_s"], 3),
            "cpu_time_ratio": round(cpu[1] / cpu[0], 3) if all(cpu) else None,
            "jkd_img_per_s": jkd_rec["img_per_s"], "peer_img_per_s": peer_rec["img_per_s"]}


def summarize(path: str) -> str:
    """Markdown table of every jkd record in a JSON-lines file, with its ratio to the latest peer
    record per mode before it in that file that timed the same work (`pair_mismatch`; a file is one
    device call, so: same card; a repeated measurement pairs with its own call's peer lines)."""
    recs = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    peers = [r for r in recs if r.get("kind") == "peer"]
    rows = ["| device | teacher -> students | attention | dw | flags | img/s | step ms | MFU | peak GiB | "
            "vs torch eager | vs torch.compile |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(recs):
        if r.get("kind") != "jkd":
            continue
        same = {p["peer"]: p["img_per_s"] for p in recs[:i] if p.get("kind") == "peer" and pair_mismatch(r, p) is None}
        ratio = {m: f"{r['img_per_s'] / same[m]:.3f}x" if m in same else "-" for m in ("torch_eager", "torch_compile")}
        rows.append(f"| {r['device']} | {r['teacher']} -> {r['students']} | {r['attention']}"
                    f"{'/pad ' + str(r['attention_pad']) if r['attention_pad'] else ''} | {r.get('dw_impl', 'auto')} | "
                    f"{r.get('xla_flags') or '-'} | {r['img_per_s']} | {r['step_ms']} | {r['mfu']} | "
                    f"{r['peak_memory_gib']} | {ratio['torch_eager']} | {ratio['torch_compile']} |")
    for p in peers:
        rows.append(f"| {p.get('device', '')} | {p['teacher']} -> {p['students']} | {p['peer']} | | | "
                    f"{p['img_per_s']} | {p['step_ms']} | | | | |")
    return "\n".join(rows)
