"""The package's architecture, as docs/architecture.md draws it: no import circle, every import pointing down the
layers, the model knowing nothing of the layers above it, ``rvqcodec compress`` loading no training code, the
``.rvq`` container known only to ``bitstream.py`` and ``streams.py``, and every module opening with a docstring that
says its job.

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
    ("foundation", ("rvqcodec", "rvqcodec.errors", "rvqcodec.extras", "rvqcodec.fileio", "rvqcodec.dicts",
                    "rvqcodec.lengths")),
    ("model", ("rvqcodec.quantize", "rvqcodec.model", "rvqcodec.losses")),
    ("audio and format", ("rvqcodec.data", "rvqcodec.bitstream", "rvqcodec.level", "rvqcodec.packets",
                          "rvqcodec.metrics", "rvqcodec.perceptual")),
    ("codec API", ("rvqcodec.pretrained", "rvqcodec.chunking", "rvqcodec.streams", "rvqcodec.api",
                   "rvqcodec.codec_files", "rvqcodec.scoring", "rvqcodec.realtime", "rvqcodec.live")),
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


CONTAINER_MODULES = ("rvqcodec/bitstream.py", "rvqcodec/streams.py")
"""The container alone (bytes <-> header and codes) and the one codec <-> stream module: the only code that builds
headers, packs codes or reads the layout."""
CONTAINER_NAMES = frozenset({
    "encode_bitstream", "decode_bitstream", "read_header", "write_rvq", "read_rvq", "pack_codes", "unpack_codes",
    "check_model", "MAGIC", "FORMAT_VERSION", "HEADER_SIZE", "TRAILER_SIZE", "_HEADER_STRUCTS", "header_size",
    "_CRC_STRUCT", "_PACK_CHUNK_CODES"})
"""What of ``rvqcodec.bitstream`` makes or reads a container. The rest may be used anywhere: ``RVQHeader`` as a type
(never constructed), the errors, and the size rules (``OVERHEAD_BYTES``, ``file_size``, ``payload_size``)."""
SCANNED_FOLDERS = ("rvqcodec", "benchmarks", "recipes")


def container_uses(path: Path, module: str) -> list[str]:
    """Where the source of ``module`` (at ``path``) uses the container itself: a name of :data:`CONTAINER_NAMES`
    imported from or read off ``rvqcodec.bitstream`` (however it was imported: absolute, relative, aliased), a call
    of ``RVQHeader(...)`` (a header built by hand), or the magic bytes ``b"RVQC"`` written out."""
    package = module.rpartition(".")[0] if path.name != "__init__.py" else module
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bitstream_names = {"rvqcodec.bitstream"}  # expressions that are the bitstream module
    header_names: set[str] = set()  # names bound to RVQHeader
    found = []

    def where(node: ast.AST, what: str) -> None:
        found.append(f"{path.as_posix()}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "rvqcodec.bitstream" and alias.asname:
                    bitstream_names.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                bound = alias.asname or alias.name
                if source == "rvqcodec" and alias.name == "bitstream":
                    bitstream_names.add(bound)
                elif source == "rvqcodec.bitstream" and alias.name in CONTAINER_NAMES:
                    where(node, f"imports {alias.name} from rvqcodec.bitstream")
                elif source == "rvqcodec.bitstream" and alias.name == "RVQHeader":
                    header_names.add(bound)
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes) and b"RVQC" in node.value:
            where(node, "writes out the magic bytes b'RVQC'")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in bitstream_names:
            if node.attr in CONTAINER_NAMES:
                where(node, f"uses bitstream.{node.attr}")
            elif node.attr == "RVQHeader":
                header_names.add(ast.unparse(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in header_names:
            where(node, "builds an RVQHeader")
    return found


def scanned_sources(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Dotted name -> file of every ``.py`` file of the package, the benchmarks and the recipes."""
    sources = {}
    for folder in SCANNED_FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            sources[".".join(parts)] = path
    return sources


def test_only_bitstream_and_streams_know_the_rvq_container():
    """Issue 29: "encode -> header -> container bytes" was put together by hand in four modules. Now
    ``rvqcodec/streams.py`` is the one codec <-> stream module; everything else goes through it."""
    sources = scanned_sources()
    assert {"rvqcodec.api", "rvqcodec.codec_files", "rvqcodec.commands.roundtrip", "benchmarks.quality",
            "benchmarks.listening"} <= set(sources)
    outside = [line for module, path in sources.items()
               if path.relative_to(REPO_ROOT).as_posix() not in CONTAINER_MODULES
               for line in container_uses(path, module)]
    assert not outside, "the .rvq container used outside bitstream.py and streams.py:\n" + "\n".join(outside)
    # the check sees the real thing: streams.py itself builds headers and bytes
    uses = container_uses(REPO_ROOT / "rvqcodec" / "streams.py", "rvqcodec.streams")
    assert any("encode_bitstream" in line for line in uses) and any("RVQHeader" in line for line in uses), uses


def test_the_container_check_sees_every_way_of_building_a_stream(tmp_path):
    """The check itself, on the hand-built streams of the old layout and their variants."""
    package = tmp_path / PACKAGE
    (package / "commands").mkdir(parents=True)
    sources = {
        "api": "from rvqcodec import bitstream\ndef f(h, c):\n    return bitstream.encode_bitstream(h, c)\n",
        "header": "from rvqcodec.bitstream import RVQHeader as H\ndef f(c):\n    return H(1, 1, 1, 1, 0, c)\n",
        "commands/roundtrip": "def f():\n    from .. import bitstream as b\n    return b.pack_codes\n",
        "aliased": "import rvqcodec.bitstream as bs\nx = bs.RVQHeader(1, 1, 1, 1, 0, 'id')\n",
        "relative": "from .bitstream import _HEADER_STRUCTS\n",
        "by_hand": "import struct\nHEAD = b'RVQC' + struct.pack('<B', 1)\n",
        "allowed": ("from rvqcodec.bitstream import OVERHEAD_BYTES, BitstreamError, RVQHeader\n"
                    "from rvqcodec import bitstream\n"
                    "def f(h: RVQHeader) -> int:\n"
                    "    return h.n_q + OVERHEAD_BYTES + bitstream.file_size(1, 1, 1, 1)\n"),
    }
    found = {}
    for name, text in sources.items():
        path = package / f"{name}.py"
        path.write_text(text)
        found[name] = container_uses(path, f"{PACKAGE}.{name.replace('/', '.')}")
    assert {name: len(lines) for name, lines in found.items()} == {
        "api": 1, "header": 1, "commands/roundtrip": 1, "aliased": 1, "relative": 1, "by_hand": 1, "allowed": 0}, found
    assert "uses bitstream.encode_bitstream" in found["api"][0] and "builds an RVQHeader" in found["header"][0]
