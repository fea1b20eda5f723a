"""Optional dependencies: compressing needs only the core packages, scoring the ``eval`` extra and training the
``train`` extra; a missing extra is one line naming it; ``pip install -e ".[dev]"`` (CI) installs everything the
test suite needs. Missing packages are simulated in a child process by an import hook that refuses them."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rvqcodec.extras import EXTRA_OF_MODULE, PACKAGE_OF_MODULE

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_WAV = REPO_ROOT / "samples" / "1272-128104-0000_3s.wav"
OPTIONAL_MODULES = tuple(sorted(EXTRA_OF_MODULE))  # accelerate, auraloss, matplotlib, pesq, pystoi, tensorboard, yaml

_RUN_WITHOUT = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
from rvqcodec.cli import main
code = main(sys.argv[2:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("LOADED", ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def run_without(modules, *args, timeout: float = 180) -> subprocess.CompletedProcess:
    """``rvqcodec ARGS`` in a child process in which ``modules`` cannot be imported."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", _RUN_WITHOUT, ",".join(modules), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if "error:" in line]


def test_compress_and_decompress_need_only_the_core_dependencies(tmp_path):
    result = run_without(OPTIONAL_MODULES, "compress", SAMPLE_WAV, tmp_path / "a.rvq", "-b", "3")
    assert result.returncode == 0, result.stderr
    assert "LOADED \n" in result.stderr + "\n"  # none of the optional packages was even tried
    result = run_without(OPTIONAL_MODULES, "decompress", tmp_path / "a.rvq", tmp_path / "a.wav")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.wav").stat().st_size > 0


@pytest.mark.parametrize("missing", ["pesq", "pystoi"])
def test_scoring_without_the_eval_extra_is_one_line_naming_it(tmp_path, missing):
    for args in (["eval", SAMPLE_WAV, SAMPLE_WAV], ["roundtrip", SAMPLE_WAV, "--output-dir", tmp_path / "kept"]):
        result = run_without([missing], *args)
        assert result.returncode == 2, result.stderr
        (error,) = _errors(result.stderr)
        assert f"'{missing}' is not installed" in error and 'pip install "rvqcodec[eval]"' in error
        assert "C compiler" in error  # pesq builds from source
        assert result.stdout == ""
    assert not (tmp_path / "kept").exists()  # refused before any work


def test_training_without_the_train_extra_is_one_line_naming_it(tmp_path):
    recipe = REPO_ROOT / "recipes" / "librispeech" / "tiny.yaml"
    for missing in (["accelerate"], ["yaml"]):
        result = run_without(missing, "train", recipe, f"train.run_dir={tmp_path / 'run'}", "train.steps=1")
        assert result.returncode == 2, result.stderr[-2000:]
        (error,) = _errors(result.stderr)
        package = PACKAGE_OF_MODULE.get(missing[0], missing[0])
        assert f"'{package}' is not installed" in error and 'pip install "rvqcodec[train]"' in error


def _requirements(pyproject: dict, extra: str | None) -> set[str]:
    """Package names a ``pip install rvqcodec[extra]`` pulls in (the core when ``extra`` is None), following
    self-references like ``rvqcodec[eval,train]``."""
    project = pyproject["project"]
    items = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    names: set[str] = set()
    for item in items:
        name = item.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if name == project["name"]:
            for sub in item[item.index("[") + 1:item.index("]")].split(","):
                names |= _requirements(pyproject, sub.strip())
        else:
            names.add(name)
    return names


def test_extras_split_inference_scoring_and_training_and_dev_installs_all():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    core, dev = _requirements(pyproject, None), _requirements(pyproject, "dev")
    optional_packages = {PACKAGE_OF_MODULE.get(m, m) for m in OPTIONAL_MODULES}
    assert not core & optional_packages, core & optional_packages  # compressing needs none of them
    assert {"torch", "torchaudio", "soundfile", "numpy"} <= core
    for module, extra in EXTRA_OF_MODULE.items():  # rvqcodec.extras names the extra that really provides it
        assert PACKAGE_OF_MODULE.get(module, module) in _requirements(pyproject, extra), (module, extra)
    assert {"pytest"} | optional_packages <= dev  # .ci/run: pip install -e ".[dev]" && pytest
