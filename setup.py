"""Build hook: ship the project's ``data/``, ``notebooks/`` and ``params/`` inside the wheel as
``traitlab/_project/``, so a normal (non-editable) install finds its prompt sets, notebooks and
profiles (``traitlab.paths.PROJECT_ROOT``). Everything else is declared in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROJECT_DIRS = ("data", "notebooks", "params")


class BuildPyWithProject(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        dest = Path(self.build_lib) / "traitlab" / "_project"
        for name in PROJECT_DIRS:
            src = HERE / name
            if src.is_dir():
                shutil.copytree(src, dest / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


setup(cmdclass={"build_py": BuildPyWithProject})
