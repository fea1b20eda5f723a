"""The package's architecture, as docs/architecture.md draws it: no import circle, every import pointing down the
layers, the model knowing nothing of the layers above it, ``rvqcodec compress`` loading no training code, and
every module opening with a docstring that says its job.

Imports are read from the source with ``ast`` (never executed): module-level ones and the ones inside functions or
``if TYPE_CHECKING:`` blocks alike, relative ones resolved, and ``importlib.import_module("rvqcodec...")`` with a
literal name. Importing ``rvqcodec.a.b`` also runs ``rvqcodec/a/__init__.py``; that implicit step is not an edge
(only what a module names is).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rvqcodec"
SAMPLE_WAV = REPO_ROOT / "samples" / "1272-128104-0000_3s.wav"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("rvqcodec", "rvqcodec.errors", "rvqcodec.extras", "rvqcodec.fileio", "rvqcodec.dicts")),
    ("model", ("rvqcodec.quantize", "rvqcodec.model", "rvqcodec.losses")),
    ("audio and format", ("rvqcodec.data", "rvqcodec.bitstream", "rvqcodec.metrics", "rvqcodec.perceptual")),
    ("codec API", ("rvqcodec.pretrained", "rvqcodec.chunking", "rvqcodec.codec_header", "rvqcodec.api",
                   "rvqcodec.codec_files", "rvqcodec.scoring")),
    ("training", ("rvqcodec.training",)),
    ("command line", ("rvqcodec.commands", "rvqcodec.cli", "rvqcodec.__main__", "rvqcodec.training.__main__")),
)
"""Bottom to top; a module belongs to the layer of its longest listed prefix (``rvqcodec`` alone: the package's
``__init__``). A module may import its own layer and the layers below it, never one above."""


def package_modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of the package under ``root``."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in: itself if it is a module, else its longest module prefix."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports anywhere in its source (see the module docstring)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, modules) for alias in node.names
                         if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # "from rvqcodec import api" names the module rvqcodec.api
                full = f"{source}.{alias.name}"
                found.add(full if full in modules else _resolve(source, modules))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] == PACKAGE):
            found.add(_resolve(node.args[0].value, modules))
    found.discard(None)
    found.discard(module)
    return found  # type: ignore[return-value]


def import_graph(root: Path = REPO_ROOT) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def layer_of(module: str) -> int:
    best, best_length = None, -1
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix if prefix == PACKAGE else module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_length:
                best, best_length = level, len(prefix)
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py (add it, and to the docs)"
    return best


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["rvqcodec.api"] >= {"rvqcodec.chunking", "rvqcodec.pretrained"}  # it reads
    cycles = import_cycles(graph)
    described = ["; ".join(f"{a} -> {', '.join(sorted(graph[a] & set(cycle)))}" for a in cycle) for cycle in cycles]
    assert not cycles, "import circles (function-level imports count too):\n" + "\n".join(described)


def test_the_cycle_check_sees_function_level_and_relative_imports(tmp_path):
    """The check itself: the two circles of the old layout (model.codec -> streaming inside a method, and
    relative imports inside a subpackage) are found."""
    (tmp_path / PACKAGE / "model").mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (tmp_path / PACKAGE / "model" / "__init__.py").write_text("from .codec import Codec\n")
    (tmp_path / PACKAGE / "model" / "codec.py").write_text(
        "class Codec:\n    def compress(self):\n        from rvqcodec.streaming import compress\n")
    (tmp_path / PACKAGE / "streaming.py").write_text("from rvqcodec.model.codec import Codec\n")
    (tmp_path / PACKAGE / "model" / "a.py").write_text("from . import b\n")
    (tmp_path / PACKAGE / "model" / "b.py").write_text("def f():\n    from .a import x\n")
    cycles = import_cycles(import_graph(tmp_path))
    assert sorted(cycles) == [["rvqcodec.model.a", "rvqcodec.model.b"], ["rvqcodec.model.codec", "rvqcodec.streaming"]]


def test_each_layer_imports_only_itself_and_the_layers_below():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in sorted(import_graph().items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "imports pointing up the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_the_model_knows_nothing_of_streams_files_or_the_shipped_checkpoint():
    allowed = {"rvqcodec.dicts", "rvqcodec.fileio"}  # Codec.save writes its checkpoint atomically
    for module, targets in import_graph().items():
        if module.startswith(("rvqcodec.model", "rvqcodec.quantize")):
            outside = {t for t in targets if not t.startswith(("rvqcodec.model", "rvqcodec.quantize"))} - allowed
            assert not outside, (module, outside)


def test_every_module_opens_with_a_docstring_saying_its_job():
    for module, path in package_modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert docstring and len(docstring.split()) >= 6, f"{module} ({path}) has no docstring saying its job"


TRAINING_ONLY_MODULES = ("rvqcodec.training", "rvqcodec.model.discriminators", "rvqcodec.losses",
                         "rvqcodec.data.datasets", "rvqcodec.data.clips", "rvqcodec.data.augment")
"""Modules (and packages) that only training uses: ``rvqcodec compress`` must load none of them."""


def test_compress_loads_no_training_code_and_no_training_dependency(tmp_path):
    script = ("import sys\nfrom rvqcodec.cli import main\ncode = main(sys.argv[1:])\n"
              "heavy = ('matplotlib', 'accelerate', 'tensorboard', 'auraloss', 'yaml', 'pyroomacoustics')\n"
              f"training = {TRAINING_ONLY_MODULES!r}\n"
              "print('LOADED', sorted(m for m in sys.modules if m.startswith(training) or "
              "m.split('.')[0] in heavy))\nsys.exit(code)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script, "compress", str(SAMPLE_WAV), str(tmp_path / "a.rvq"),
                             "-b", "3"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout
