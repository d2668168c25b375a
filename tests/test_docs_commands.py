"""Every `python -m jkd...` command the docs show parses (issue 16: docs that cannot drift).

Where: README.md, docs/*.md, the docstrings of configs/**/*.py and benchmarks/*.py, and colabs/*.ipynb
(markdown cells; code cells as `!python -m jkd...` lines or subprocess argument lists). In markdown:
fenced blocks line by line and inline `code` spans (which may wrap lines). Lines continued with `\\`
are joined; what precedes `python` on a line (`VAR=value`, `for ...; do`) and what ends a command
(`# comment`, `;`, `&&`, `|`, `&`, `>`, a closing backtick) are cut off.

What is checked, in-process, with nothing trained, read from a workdir or written:
  jkd.main   the flags as the CLI parses them (jkd.main.parse_args: the --config file loads, each
             --config.a.b=v names a field of it and v parses), then jkd.trainers.validate (start-up checks).
  jkd.sweep  its parse_args, then jkd.sweep.plan: every point through validate, as --dry-run does.
  jkd.X      any other tool: the module exists and its parse_args(argv) accepts the arguments.
A command that is only the tool's name (`python -m jkd.sweep`, or with `...` alone) is a mention:
its module must exist.

Placeholders, substituted before parsing (everything else is parsed as shown; a string field takes
any text, so `DIR`, `/path/to/x` and `<run>` in one need nothing):
  * `$v` / `${v}` of a `for v in a b c` loop in the same block -> its first value (`a`);
  * any other `$VAR` / `${VAR}` -> a tmp path;
  * the value of --workdir and --out -> a tmp path (so a command can never point at a real run);
  * a `...` (or `\u2026`) argument on its own (elided flags) -> dropped;
  * a non-literal element of a subprocess argument list -> a tmp path.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import glob
import importlib
import importlib.util
import io
import os
import re
import shlex

import nbformat

from jkd.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = "/tmp/jkd_docs_commands"  # never created: parsing reads no workdir
SHOWN = re.compile(r"\bpython3?\s+-m\s+(jkd[\w.]*)")
SUBPROCESS = re.compile(r"""["']-m["']\s*,\s*["']jkd""")
LOOP = re.compile(r"\bfor\s+(\w+)\s+in\s+([^;\n]+?)\s*(?:;|\n)\s*do\b")
PATH_FLAGS = ("--workdir", "--out")
# Fewer commands with arguments than this per kind of source means the extraction broke (found when
# written: 53 in docs/*.md, 18 in README.md, 28 in config/benchmark docstrings, 6 in the notebooks).
FLOORS = {"docs": 40, "README": 12, "py": 20, "notebook": 5}


@dataclasses.dataclass
class Command:
    where: str          # 'docs/EXPORT.md:8', 'colabs/05_....ipynb cell 12', 'configs/x.py:4'
    kind: str           # which FLOORS entry
    module: str         # 'jkd.main'
    shown: str          # the command as joined from the source
    argv: list          # arguments after the module, placeholders substituted


def _loops(block: str) -> dict:
    return {m.group(1): m.group(2).split()[0] for m in LOOP.finditer(block)}


def _argv(text: str, loops: dict) -> list[str] | None:
    """The arguments of one shown command (`text` starts after the module name); None if the
    shell cannot split it (an unclosed quote)."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    try:
        tokens = list(lex)
    except ValueError:
        return None
    argv = []
    for tok in tokens:
        if tok and (set(tok) <= set(";&|") or re.match(r"\d*>", tok)):
            break
        if tok in ("...", "\u2026"):
            continue
        tok = re.sub(r"\$\{?(\w+)\}?", lambda m: loops.get(m.group(1), os.path.join(TMP, m.group(1))), tok)
        if argv and argv[-1] in PATH_FLAGS:
            tok = os.path.join(TMP, "workdir")
        elif tok.split("=")[0] in PATH_FLAGS and "=" in tok:
            tok = tok.split("=")[0] + "=" + os.path.join(TMP, "workdir")
        argv.append(tok)
    return argv


def _from_text(text: str, where_of, kind: str, inline: bool, loops: dict) -> list[Command]:
    """Commands in `text`: a shell block (lines; `\\` joins) or one inline code span (inline=True).
    where_of(offset into text) -> 'file:line'."""
    found = []
    lines = [(text, 0)] if inline else []
    if not inline:
        offset, raw = 0, text.split("\n")
        i = 0
        while i < len(raw):
            start, line = offset, raw[i]
            while line.rstrip().endswith("\\") and i + 1 < len(raw):
                offset += len(raw[i]) + 1
                i += 1
                line = line.rstrip()[:-1] + " " + raw[i].strip()
            offset += len(raw[i]) + 1
            i += 1
            lines.append((line, start))
    for line, start in lines:
        for m in SHOWN.finditer(line):
            rest = line[m.end():]
            if not inline and line[:m.start()].count("`") % 2:  # an inline span inside a shell block
                rest = rest.split("`")[0]
            shown = line[m.start():m.end()] + rest
            found.append(Command(where_of(start), kind, m.group(1), " ".join(shown.split()), _argv(rest, loops)))
    return found


def _line_of(text: str, base: int = 1):
    return lambda offset: base + text.count("\n", 0, offset)


def _from_markdown(text: str, name: str, kind: str) -> list[Command]:
    line_of = _line_of(text)
    found, pos = [], 0  # pos: where the prose after the last fence starts
    fences = [(f.start(1), f.end(1), f.end()) for f in re.finditer(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", text,
                                                                    re.S | re.M)]
    for start, end, after in fences + [(len(text), len(text), len(text))]:
        for code in re.finditer(r"`([^`]+)`", text[pos:start]):
            if SHOWN.search(code.group(1)):
                at = pos + code.start(1)
                found += _from_text(code.group(1), lambda o, at=at: f"{name}:{line_of(at + o)}", kind, True, {})
        if start < len(text):
            block = text[start:end]
            found += _from_text(block, lambda o, at=start: f"{name}:{line_of(at + o)}", kind, False, _loops(block))
        pos = after
    return found


def _from_python(path: str, name: str) -> list[Command]:
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node, clean=False):
            doc = node.body[0].value.value
            line = node.body[0].lineno
            found += _from_text(doc, lambda o, d=doc, b=line: f"{name}:{_line_of(d, b)(o)}", "py", False,
                                _loops(doc))
    return found


def _from_subprocess_lists(source: str, where: str) -> list[Command]:
    found = []
    try:
        tree = ast.parse("\n".join("" if ln.lstrip().startswith(("!", "%")) else ln for ln in source.split("\n")))
    except SyntaxError:
        return found
    for node in ast.walk(tree):
        if not isinstance(node, (ast.List, ast.Tuple)):
            continue
        items = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
        for i in range(len(items) - 1):
            if items[i] == "-m" and (items[i + 1] or "").startswith("jkd"):
                argv = [a if a is not None else os.path.join(TMP, "arg") for a in items[i + 2:]]
                found.append(Command(f"{where} line {node.lineno}", "notebook", items[i + 1],
                                     "python -m " + " ".join([items[i + 1], *argv]), argv))
    return found


def _sources() -> list[tuple[str, str, str]]:
    """[(name relative to the repo, kind, text as searched)]."""
    out = [("README.md", "README", open(os.path.join(REPO, "README.md")).read())]
    out += [(os.path.relpath(p, REPO), "docs", open(p).read()) for p in sorted(glob.glob(f"{REPO}/docs/*.md"))]
    for pattern in ("configs/**/*.py", "benchmarks/*.py"):
        out += [(os.path.relpath(p, REPO), "py", open(p).read())
                for p in sorted(glob.glob(os.path.join(REPO, pattern), recursive=True))]
    out += [(os.path.relpath(p, REPO), "notebook", "") for p in sorted(glob.glob(f"{REPO}/colabs/*.ipynb"))]
    return out


def _unread(where: str, text: str, got: list, code: bool = False) -> list[str]:
    """[a line] if `text` shows more `-m jkd` commands than were read from it (one in prose or in
    a comment, where the extraction does not look), else []. code: `text` is a notebook code cell,
    whose subprocess argument lists are commands too (a benchmark's are its own code, not docs)."""
    shown = len(SHOWN.findall(text)) + (len(SUBPROCESS.findall(text)) if code else 0)
    return [f"{where}: shows {shown} `-m jkd` commands, {len(got)} read (one outside a code span, code block "
            f"or docstring?)"] if len(got) != shown else []


def collect() -> tuple[list[Command], list[str]]:
    """(every shown command, [extraction problems: see _unread])."""
    commands, missed = [], []
    for name, kind, text in _sources():
        if not name.endswith(".ipynb"):
            got = (_from_markdown(text, name, kind) if name.endswith(".md")
                   else _from_python(os.path.join(REPO, name), name))
            commands, missed = commands + got, missed + _unread(name, text, got)
            continue
        for i, cell in enumerate(nbformat.read(os.path.join(REPO, name), as_version=4).cells):
            where, src = f"{name} cell {i}", cell.source
            if cell.cell_type == "markdown":
                got = _from_markdown(src, where, kind)
            elif cell.cell_type == "code":
                got = _from_text(src, lambda o, s=src, w=where: f"{w} line {_line_of(s)(o)}", kind, False, _loops(src))
                got += _from_subprocess_lists(src, where)
            else:
                got = []
            commands, missed = commands + got, missed + _unread(where, src, got, cell.cell_type == "code")
    return commands, missed


def _parser_module(module: str):
    """The module whose parse_args parses `python -m module` (a package's __main__)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(module)
    return importlib.import_module(module + ".__main__" if spec.submodule_search_locations else module)


def check(module: str, argv: list[str] | None) -> str | None:
    """None if `python -m module *argv` parses and passes the start-up checks, else why not."""
    if argv is None:
        return "the shell cannot split it (an unclosed quote?)"
    err = io.StringIO()
    try:
        parser = _parser_module(module)
        if not argv:
            return None  # the tool's name alone (or a run without arguments): the module exists
        if not hasattr(parser, "parse_args"):
            return f"{parser.__name__} has no parse_args(argv) to check the arguments with"
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if module == "jkd.main":
                from jkd import trainers
                config, _ = parser.parse_args(argv)
                trainers.validate(config)
            elif module == "jkd.sweep":
                args = parser.parse_args(argv)
                parser.plan(args.config, args.sweep, args.set)
            else:
                parser.parse_args(argv)
    except ModuleNotFoundError as e:
        return f"there is no module {e.name or module}"
    except SystemExit as e:
        if e.code in (0, None):
            return None
        if isinstance(e.code, str):
            return e.code
        text = err.getvalue().strip()
        return text[text.find("error:"):] if "error:" in text else text or f"exit status {e.code}"
    except ConfigError as e:
        return f"ConfigError: {e}"
    except Exception as e:  # a crash while parsing is a broken command too: list it with the others
        return f"{type(e).__name__}: {e}"
    return None


def test_commands_are_found():
    commands, missed = collect()
    assert not missed, "commands shown where this test cannot read them:\n" + "\n".join(missed)
    counts = {kind: sum(c.kind == kind and bool(c.argv) for c in commands) for kind in FLOORS}
    low = {k: (counts[k], floor) for k, floor in FLOORS.items() if counts[k] < floor}
    assert not low, f"fewer commands than the floor (found, floor): {low}; did the extraction break?"


def test_shown_commands_parse(monkeypatch):
    monkeypatch.chdir(REPO)  # the docs' --config paths are relative to the repository root
    commands, _ = collect()
    broken = [f"{c.where}: {c.shown}\n    -> {why}" for c in commands if (why := check(c.module, c.argv))]
    assert not broken, f"{len(broken)} of {len(commands)} shown commands do not parse:\n" + "\n".join(broken)


def test_the_check_catches_broken_commands(monkeypatch):
    """The extraction and the check on a written block: each kind of mistake is caught, each
    placeholder rule applies (so the two tests above cannot pass vacuously)."""
    monkeypatch.chdir(REPO)
    block = ("for s in 0 1; do\n"
             "  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m jkd.main --config configs/quickstart.py\\\n"
             "    --workdir $OUT/q$s --config.seed=$s   # comment --config.nope=1\n"
             "done\n"
             "python -m jkd.main --config configs/quickstart.py --workdir DIR --config.no_such_field=1\n"
             "python -m jkd.main --config configs/quickstart.py --workdir DIR --config.seed=abc && echo\n"
             "python -m jkd.main --config configs/no_such_recipe.py --workdir DIR\n"
             "python -m jkd.main --config configs/quickstart.py --workdir DIR --config.trainer=nope\n"
             "python -m jkd.export --workdir <run>/kd_hinton --verify FILE.onnx\n"
             "python -m jkd.no_such_tool --help\n"
             "python -m jkd.sweep --config configs/quickstart.py --workdir /tmp/s --sweep 'no_such_field=0:2'\n")
    text = f"Run `python -m jkd.sweep` or\n```bash\n{block}```\n"
    got = _from_markdown(text, "t.md", "docs")
    assert [c.where for c in got] == ["t.md:1", *(f"t.md:{n}" for n in (4, 7, 8, 9, 10, 11, 12, 13))]
    assert got[1].argv == ["--config", "configs/quickstart.py", "--workdir", f"{TMP}/workdir", "--config.seed=0"]
    assert got[6].argv[1] == f"{TMP}/workdir"
    assert [check(c.module, c.argv) is None for c in got] == [True, True] + [False] * 7
    assert "no_such_field" in check(got[2].module, got[2].argv)
    assert "unrecognized arguments: --verify" in check(got[6].module, got[6].argv)
    assert "no module jkd.no_such_tool" in check(got[7].module, got[7].argv)
    (bang,) = _from_text("!JKD_FAST=1 python -m jkd.export --workdir $W --benchmark > log.txt\n", str, "notebook",
                         False, {})
    assert bang.module == "jkd.export" and bang.argv == ["--workdir", f"{TMP}/workdir", "--benchmark"]
    cell = 'subprocess.run([sys.executable, "-m", "jkd.export", "--workdir", d, "--benchmark"])\n'
    (sub,) = _from_subprocess_lists(cell, "nb cell 1")
    assert sub.module == "jkd.export" and sub.argv == ["--workdir", f"{TMP}/arg", "--benchmark"]
    assert check(sub.module, sub.argv) is None
    assert not _unread("nb cell 1", cell, [sub], code=True) and _unread("nb cell 1", cell, [], code=True)
    assert not _unread("t.md", text, got)
    prose = text + "Or run python -m jkd.main --config configs/quickstart.py, outside code.\n"
    assert _unread("t.md", prose, _from_markdown(prose, "t.md", "docs"))
