"""A normal (non-editable) install finds its prompt sets, notebooks and profiles, and every
third-party package the library imports is declared."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)
IMPORT_NAME = {"sklearn": "scikit-learn", "yaml": "pyyaml", "IPython": "ipython"}
OPTIONAL = {"steering_vectors", "repeng", "llama_cpp"}  # converters/tests: the peer venv or dev extra


def _imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - STDLIB - {"traitlab", "__future__"}


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]}
    used = _imports(ROOT / "lib" / "traitlab") | _imports(ROOT / "notebooks")
    missing = {IMPORT_NAME.get(n, n).lower().replace("_", "-") for n in used - OPTIONAL} - declared
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    assert not any("llama" in d for d in declared), "llama-cpp-python belongs to the dev extra"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("lib", "data", "notebooks", "params"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".*"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, capture_output=True)
    return next(out.glob("traitlab-*.whl"))


def test_wheel_ships_data_params_and_notebooks(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("data/traits/optimism.jsonl", "data/judge/gold_optimism.jsonl", "notebooks/method_comparison.py",
                 "params/method_comparison/ci.yaml"):
        assert f"traitlab/_project/{path}" in names, path


def test_installed_wheel_finds_its_project_files(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = ("import traitlab.paths as P, traitlab.params as Q, traitlab.data as D, traitlab.runinfo as R;"
            "assert R.git_commit().startswith('installed traitlab'), R.git_commit();"
            "print(P.IS_CHECKOUT, P.PROJECT_ROOT, sep='|');"
            "print(Q.notebook_path('method_comparison').is_file(), len(D.load_trait('optimism').pairs),"
            " sorted(Q.load_profile('method_comparison', 'ci'))[:2], P.reports_root(), sep='|')")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    first, second = run.stdout.strip().splitlines()
    checkout, root = first.split("|")
    assert checkout == "False" and root == str(target / "traitlab" / "_project")
    assert second.split("|")[:3] == ["True", "110", "['acc_threshold', 'batch_size']"]
    assert second.split("|")[3] == str(tmp_path / "reports")
