"""Research probes built on jkd's pieces; each is a `config.trainer` that `jkd.main.run` dispatches to.

  theory.py   ensemble, knowledge distillation and self-distillation on multi-view data
              (Allen-Zhu & Li, ICLR 2023): configs/theory/*.py, `trainer = "theory"`.
"""
