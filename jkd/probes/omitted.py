"""Hinton, Vinyals & Dean (2015), section 3: distillation transfers a class the student never saw.

    python -m jkd.main --config configs/hinton_omitted.py --workdir /tmp/jkd_omitted

The quickstart pipeline (jkd/train/quickstart.py) with config.data.exclude_classes: the teacher
learns every class; the KD students' transfer set and their label-only twins lack the excluded
classes. Then every model is scored on the full test set, and the students also after an
evaluation-time bias shift on the excluded classes' logits:

  prior shift   chosen without any label of an excluded class: the shift that makes each excluded
                class's predicted frequency on the training images (all classes, labels unused)
                equal its prior, estimated as the teacher's predicted frequency there;
  oracle shift  the shift that minimises the test errors (uses the test labels; what the paper
                reports, "increased by 3.5 (which optimizes overall performance on the test set)").

Writes <workdir>/omitted.md and omitted.json (process 0) next to the quickstart's results.md.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from jkd import evaluate, rundir
from jkd.checkpoint import load_teacher, teacher_preprocessing
from jkd.data import excluded_classes, make_data, preprocess
from jkd.train.quickstart import parse_methods, run_quickstart
from jkd.train.state import apply_model


def _all_logits(workdir: str, model_key: str, data_input, *datasets) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per dataset, (logits [N, K], labels [N]) of one trained model on its eval set (host-local,
    unsharded): the checkpoint is restored and the forward compiled once for all of them. The
    images, normalised as data_input (ModelInput), reach the model as it expects (as in distill)."""
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # scored on one device, unsharded
    spec, graphdef, params = load_teacher(workdir, model_key=model_key, field=f"omitted probe: {workdir}",
                                          shardings_fn=lambda shapes: jax.tree.map(lambda _: local, shapes))
    view = preprocess.view_fn(data_input, teacher_preprocessing(workdir, spec))
    forward = jax.jit(lambda p, x: apply_model(graphdef, p, x if view is None else view(x)))
    out = []
    for data in datasets:
        logits, labels = [], []
        for batch in data.eval_batches():
            real = np.asarray(batch["mask"]) > 0
            logits.append(np.asarray(forward(params, batch["image"]))[real])
            labels.append(np.asarray(batch["label"])[real])
        out.append((np.concatenate(logits), np.concatenate(labels)))
    return out


def _local_data(config, eval_split: str | None = None):
    """The config's data read in full by this process (exclusions off: every class is scored)."""
    data_cfg = config.data.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.exclude_classes = ()
        if eval_split is not None:
            data_cfg.eval_split = eval_split
    return make_data(data_cfg, seed=config.seed, global_batch_size=config.batch_size,
                     eval_batch_size=config.eval_batch_size, process_index=0, process_count=1)


def score_students(config, workdir: str) -> dict:
    """Errors of every trained model before and after the prior and oracle bias shifts (see module doc)."""
    test = _local_data(config)
    classes = excluded_classes(config.data, test.num_classes)
    train_images = _local_data(config, eval_split=config.data.train_split)
    teacher_dir = os.path.join(workdir, "teacher")
    data_input = preprocess.data_input(config.data)
    (teacher_test, labels), (teacher_train, _) = _all_logits(teacher_dir, "model", data_input, test, train_images)
    prior = [float((teacher_train.argmax(1) == c).mean()) for c in classes]
    models = {"teacher": evaluate.omitted_class_errors(teacher_test, labels, classes)}
    stages = [(f"kd_{m}", name) for m in parse_methods(config) for name in config.students]
    stages += [(f"label_only_{name}", "model") for name in config.students]
    for stage, key in stages:
        stage_dir = os.path.join(workdir, stage)
        info_path = os.path.join(stage_dir, "run.json")
        with open(info_path) as f:
            if key not in json.load(f)["models"]:
                continue  # a method that does not apply to this student
        scored = _all_logits(stage_dir, key, data_input, test, *([train_images] if classes else []))
        test_logits = scored[0][0]
        row = {"before": evaluate.omitted_class_errors(test_logits, labels, classes)}
        if classes:
            train_logits = scored[1][0]
            shift = evaluate.prior_matching_shift(train_logits, classes, prior)
            oracle = evaluate.oracle_shift(test_logits, labels, classes)
            row["prior_shift"] = [float(shift[c]) for c in classes]
            row["oracle_shift"] = [float(oracle[c]) for c in classes]
            row["prior"] = evaluate.omitted_class_errors(test_logits, labels, classes, shift)
            row["oracle"] = evaluate.omitted_class_errors(test_logits, labels, classes, oracle)
        name = config.students[key if stage.startswith("kd_") else stage[len("label_only_"):]].name
        models[f"{stage}.{key}" if key != "model" else stage] = {"model": name, **row}
    return {"excluded_classes": list(classes), "teacher_prior": prior, "num_test": int(len(labels)),
            "models": models}


def omitted_table(scores: dict) -> str:
    """Markdown table: test errors (counts) on the excluded classes and on the others, per model."""
    n_om = scores["models"]["teacher"]["omitted_count"]
    n_other = scores["models"]["teacher"]["other_count"]
    lines = [f"| model | stage | errors on excluded {scores['excluded_classes']} (of {n_om}): none / prior / "
             f"oracle shift | errors on the other classes (of {n_other}): none / prior / oracle | shift: prior / "
             f"oracle |", "|---|---|---:|---:|---:|"]
    t = scores["models"]["teacher"]
    lines.append(f"| teacher | all classes | {t['omitted_errors']} | {t['other_errors']} | – |")
    for stage, r in scores["models"].items():
        if stage == "teacher":
            continue
        b = r["before"]
        if "prior" in r:
            om = f"{b['omitted_errors']} / {r['prior']['omitted_errors']} / {r['oracle']['omitted_errors']}"
            ot = f"{b['other_errors']} / {r['prior']['other_errors']} / {r['oracle']['other_errors']}"
            sh = ", ".join(f"{p:+.2f} / {o:+.2f}" for p, o in zip(r["prior_shift"], r["oracle_shift"]))
        else:
            om, ot, sh = str(b["omitted_errors"]), str(b["other_errors"]), "–"
        lines.append(f"| {r['model']} | {stage} | {om} | {ot} | {sh} |")
    return "\n".join(lines)


def run_omitted(config, workdir: str) -> dict:
    """Run the pipeline (resumable stages), score it, write omitted.md/.json; returns the summary."""
    results = run_quickstart(config, workdir)
    scores = score_students(config, workdir)
    summary = {"seed": config.seed, **scores, "quickstart": results}
    text = (f"Omitted-class experiment (Hinton et al. 2015, section 3), seed {config.seed}: classes "
            f"{scores['excluded_classes']} are absent from the students' training data; the teacher's "
            f"predicted frequency on the training images (the prior the label-free shift matches): "
            f"{[round(p, 4) for p in scores['teacher_prior']]}. Test errors:")
    rundir.write_json(workdir, "omitted.json", summary)
    rundir.write_text(workdir, "omitted.md", text + "\n\n" + omitted_table(scores) + "\n")
    if rundir.is_writer():
        print("\n" + text + "\n\n" + omitted_table(scores) + "\n")
    return summary
