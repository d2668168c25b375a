"""Command line: run a recipe.

    python -m jkd.main --config configs/quickstart.py --workdir /tmp/jkd_quickstart
    python -m jkd.main --config configs/quickstart.py --workdir DIR --config.seed=1 --config.steps=300

The config's `trainer` field picks the trainer from jkd/trainers.py's registry. Mistakes in the config or inputs are printed to
stderr without a traceback and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jkd.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file: configs/<recipe>.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go (resumes if present).")


def run(config, workdir: str) -> dict:
    """Check config, then run the trainer config.trainer names (jkd/trainers.py); returns its summary."""
    from jkd import trainers
    return trainers.run(config, workdir)


def _fail(message: str) -> None:
    print(f"jkd: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with user mistakes as exit-2 errors: a bad value, or a `--config.<path>`
    override naming no field (ml_collections raises a bare AttributeError/KeyError for that)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    except (AttributeError, KeyError) as e:
        text = str(e.args[0]) if e.args else str(e)
        m = re.search(r"Did you mean \"([^\"]+)\" instead of \"([^\"]+)\"", text)
        bad = m.group(2) if m else text.strip("'\"").split("\\n")[0].strip("'\"")
        arg = next((a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and
                    re.search(rf"[.]{re.escape(bad)}(?:[.=]|$)", a)), "--config")
        from jkd.trainers import renamed_hint
        hint = renamed_hint(arg[len("--config."):]) if arg.startswith("--config.") else None
        if hint:
            _fail(f"{arg}: {hint}")
        _fail(f"{arg}: the config has no field {bad!r}" + (f"; did you mean {m.group(1)!r}?" if m else ""))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/quickstart.py", exitcode=2)
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required", exitcode=2)
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    try:
        from jkd import distributed
        distributed.initialize(_CONFIG.value)  # before anything touches a device
        run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(f"jkd: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
