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


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, sys_argv: list[str] | None = None):
    """The CLI's flags, defined on `flag_values`: (config holder, workdir holder). `sys_argv`: the
    command line the `--config.<field>` overrides are read from (ml_collections reads sys.argv if None)."""
    config = config_flags.DEFINE_config_file("config", None, "Recipe file: configs/<recipe>.py[:arg].",
                                             flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
    workdir = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go (resumes if present).",
                                  flag_values=flag_values)
    return config, workdir


_CONFIG, _WORKDIR = define_flags()


def run(config, workdir: str) -> dict:
    """Check config, then run the trainer config.trainer names (jkd/trainers.py); returns its summary."""
    from jkd import trainers
    return trainers.run(config, workdir)


def _fail(message: str) -> None:
    print(f"jkd: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl flag parsing with user mistakes as exit-2 errors: a bad value, or a `--config.<path>`
    override naming no field (ml_collections raises a bare AttributeError/KeyError for that)."""
    try:
        return flag_values(argv)
    except flags.Error as e:
        _fail(str(e))
    except OSError as e:  # the --config file failed to load and a --config.<field> override read it
        _fail(_load_error(e))
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


def _load_error(e: OSError) -> str:
    return "--config: " + " ".join(str(e.__cause__ or e).split())


def _usage_problem(rest: list[str], config, workdir) -> str | None:
    if len(rest) > 1:
        return f"unexpected arguments: {rest[1:]}"
    if config is None:
        return "--config is required, e.g. --config configs/quickstart.py"
    try:
        config.get("trainer")  # ml_collections defers a file that failed to load to the config's first read
    except OSError as e:
        return _load_error(e)
    if not workdir:
        return "--workdir is required"
    return None


def parse_args(argv: list[str]):
    """The command line `argv` (no program name) parsed on fresh flags exactly as `main` parses it,
    without running anything: (config with the overrides applied, workdir). Mistakes exit 2 with the
    CLI's message. For checking shown commands in-process (tests/test_docs_commands.py)."""
    argv = ["jkd.main", *argv]
    flag_values = flags.FlagValues()
    config, workdir = define_flags(flag_values, sys_argv=argv)
    problem = _usage_problem(parse_flags(argv, flag_values), config.value, workdir.value)
    if problem:
        _fail(problem)
    return config.value, workdir.value


def main(argv):
    problem = _usage_problem(argv, _CONFIG.value, _WORKDIR.value)
    if problem:
        raise app.UsageError(problem, exitcode=2)
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
