"""Research probes built on jkd's pieces; each is a `config.trainer` of jkd/trainers.py's registry.

  theory.py (+ theory_report.py)  ensemble, KD and self-distillation on multi-view data (Allen-Zhu &
                                  Li, ICLR 2023): configs/theory/multiview.py, trainer 'theory'
  ensemble.py                     the same with real networks: configs/ensemble_kd.py, trainer 'ensemble'
  spurious.py                     group fairness under KD, early-exit reweighting: trainer 'spurious'
  augmentation.py                 class confusions from random-resized crops: trainer 'augmentation'
  omitted.py                      Hinton et al.'s omitted-class experiment: trainer 'omitted'
Shared parts: multiseed.py (many small nnx models trained at once in one vmapped program),
laplace.py (last-layer Laplace); jkd/rundir.py (cache, logs, reports, process-0 writes).
"""
