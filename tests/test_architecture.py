"""The house rules that keep jkd readable (docs/ARCHITECTURE.md): imports flow one way, one dispatch,
modules that fit in a reader's head."""
import ast
import pathlib

import pytest

from jkd import trainers
from jkd.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jkd"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """{module: {jkd modules it imports}}: every import statement, at module level or inside a
    function (a deferred import still closes a cycle), resolved to the jkd module it loads."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # 'jkd.data.tfds.x' -> the module that defines it
                    t = t.rpartition(".")[0]
                if t.startswith("jkd") and t != name and t != "jkd":
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict) -> list[str] | None:
    """One import cycle [a, b, ..., a] of the graph, or None."""
    state: dict = {}
    stack: list = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_jkd():
    graph = import_graph()
    assert len(graph) > 40 and "jkd.train.loop" in graph["jkd.train.supervised"]  # the walk sees the imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["jkd.config"] = graph["jkd.config"] | {"jkd.probes.ensemble"}  # the cycle issue 15 removed
    cycle = find_cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and "jkd.config" in cycle


# docs/ARCHITECTURE.md's layers, bottom first: a module imports from its own layer or below.
LAYERS = [
    ("bottom", ["jkd.errors", "jkd.checks", "jkd.config", "jkd.models", "jkd.data", "jkd.losses", "jkd.flops",
                "jkd.weight_files", "jkd.vit_layouts", "jkd.ranges"]),
    ("specs", ["jkd.train.state"]),
    ("run-level", ["jkd.checkpoint", "jkd.sharding", "jkd.rundir", "jkd.writers", "jkd.distributed", "jkd.evaluate"]),
    ("export", ["jkd.export"]),
    ("train", ["jkd.train"]),
    ("probes", ["jkd.probes"]),
    ("registry", ["jkd.trainers"]),
    ("CLI", ["jkd.main", "jkd.sweep", "jkd.sweep_report", "jkd.bench", "jkd.bench_peer", "jkd.report", "jkd.pretrained",
             "jkd.notebook",
             "jkd.export.__main__"]),
]


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest prefix that names `module` (None: not placed)."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_layers_import_downward():
    """Every jkd module is placed in a layer and imports only from its layer or below; nothing but
    the CLIs imports the registry."""
    graph = import_graph()
    unplaced = [m for m in graph if m != "jkd" and layer_of(m) is None]
    assert not unplaced, f"place these modules in LAYERS and docs/ARCHITECTURE.md: {unplaced}"
    upward = [(m, e) for m, edges in graph.items() if m != "jkd" for e in edges if layer_of(e) > layer_of(m)]
    assert not upward, [(m, LAYERS[layer_of(m)][0], "->", e, LAYERS[layer_of(e)][0]) for m, e in upward]
    importers = sorted(n for n, edges in graph.items() if "jkd.trainers" in edges)
    assert importers == ["jkd.main", "jkd.sweep", "jkd.sweep_report"], importers


def test_modules_fit_on_a_few_screens():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_registered_trainer_resolves():
    for trainer in trainers.REGISTRY.values():
        for ref in filter(None, (trainer.check, trainer.runner, trainer.figures)):
            assert callable(trainers._resolve(ref)), ref


def test_unknown_and_renamed_trainers_are_config_errors():
    with pytest.raises(ConfigError, match=r"config.trainer: unknown trainer 'nope' \(known: supervised, distill, "):
        trainers.get("nope")
    with pytest.raises(ConfigError, match=r"config.trainer: 'fairness' was renamed to 'spurious' or 'augmentation'"):
        trainers.get("fairness")


def test_one_dispatch():
    """No module branches on config.trainer: the registry (and, for pipeline stages, jkd/train/stages.py)
    is the only dispatch; the CLIs name no trainer."""
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("trainers.py", "stages.py"):
            continue
        text = path.read_text()
        assert ".trainer ==" not in text and ".trainer in (" not in text and ".probe ==" not in text, path
    for cli in ("main.py", "sweep.py", "sweep_report.py"):
        text = (PACKAGE / cli).read_text()
        for name in trainers.REGISTRY:
            assert f'== "{name}"' not in text and f"'{name}'" not in text, (cli, name)
