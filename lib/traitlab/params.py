"""Notebook parameters: read the tagged cell, load YAML profiles, validate before model work.

A notebook's parameters cell (``# %% tags=["parameters"]``) holds literals only. Each
notebook has a frozen ``Params`` dataclass in ``traitlab.experiments`` with the same
fields and defaults; its type hints drive validation here, and its ``check`` method adds
the checks that need to know the model (layer ranges, sites), using
``traitlab.models.describe``, which reads no weights.

Example:
    >>> from dataclasses import dataclass
    >>> from typing import Literal
    >>> @dataclass(frozen=True)
    ... class P:
    ...     layers: list[int] | None = None
    ...     site: Literal["resid_pre", "resid_post"] = "resid_pre"
    >>> validate(P, {"layers": [1, 2], "site": "resid_post"})
    P(layers=[1, 2], site='resid_post')
    >>> validate(P, {"layer": 3})
    Traceback (most recent call last):
    ...
    traitlab.params.ParamError: unknown parameter 'layer'; did you mean 'layers'? Valid: layers, site
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .paths import PROJECT_ROOT

T = TypeVar("T")


class ParamError(ValueError):
    """A parameter with an unknown key, a wrong type or a value out of range."""


def _type_ok(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is Literal:
        return value in get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return isinstance(value, list | tuple) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        kt, vt = get_args(tp)
        return isinstance(value, dict) and all(_type_ok(k, kt) and _type_ok(v, vt) for k, v in value.items())
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe_type(tp: Any) -> str:
    s = str(tp).replace("typing.", "")
    return getattr(tp, "__name__", s) if get_origin(tp) is None else s


def validate(cls: type[T], values: dict[str, Any], *, where: str = "") -> T:
    """Build ``cls`` from ``values`` after checking keys and types; clear errors otherwise."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    prefix = f"{where}: " if where else ""
    for key in values:
        if key not in hints:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParamError(f"{prefix}unknown parameter {key!r}{hint} Valid: {', '.join(names)}")
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise ParamError(f"{prefix}parameter {key!r} = {value!r} should be {_describe_type(hints[key])}")
    coerced = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
    try:
        return cls(**coerced)
    except ParamError as err:
        raise ParamError(f"{prefix}{err}") from None


def from_namespace(cls: type[T], namespace: dict[str, Any]) -> T:
    """Pick ``cls``'s fields out of a notebook's globals and validate them."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return validate(cls, {n: namespace[n] for n in names if n in namespace})


def notebook_path(name: str) -> Path:
    path = PROJECT_ROOT / "notebooks" / f"{name}.py"
    if not path.exists():
        known = sorted(p.stem for p in (PROJECT_ROOT / "notebooks").glob("*.py"))
        raise ParamError(f"unknown notebook {name!r}; known: {', '.join(known)}")
    return path


def parameters_cell(path: Path) -> dict[str, Any]:
    """The literal assignments of the ``parameters``-tagged cell of a py:percent notebook."""
    text = path.read_text()
    cells = text.split("\n# %%")
    for cell in cells:
        header, _, body = cell.partition("\n")
        if "parameters" in header and "tags" in header:
            out: dict[str, Any] = {}
            for node in ast.parse(body).body:
                if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name)):
                    raise ParamError(f"{path.name}: the parameters cell may only hold `name = literal` lines")
                try:
                    out[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    raise ParamError(f"{path.name}: parameter {node.targets[0].id!r} is not a literal "
                                     "(papermill cannot override derived values)") from None
            return out
    raise ParamError(f"{path.name} has no cell tagged 'parameters'")


def notebook_name(arg: str) -> str:
    """A notebook's name from what a user typed: ``model_chain``, ``model_chain.py`` or
    ``notebooks/model_chain.py`` all name the same notebook."""
    return Path(arg).name.removesuffix(".py").removesuffix(".ipynb")


def profile_path(notebook: str, profile: str) -> Path:
    return PROJECT_ROOT / "params" / notebook / f"{profile}.yaml"


RUNTIME_KEYS = {"device_map": "TRAITLAB_DEVICE_MAP", "remote": "TRAITLAB_REMOTE"}
"""A profile's optional ``runtime:`` block: where the model runs, not what the notebook computes.
``traitlab render`` passes it to the kernel as these environment variables, which
``traitlab.models.load_model`` reads as defaults (so any notebook runs sharded or on NDIF
without code changes)."""


def check_runtime(block: Any, where: str = "runtime") -> dict[str, Any]:
    """Validate a ``runtime:`` block: ``device_map`` (null or a transformers device map string such
    as ``auto``) and ``remote`` (false, true = NDIF, or ``local`` = nnsight's local simulation)."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ParamError(f"{where}: runtime must be a mapping like {{device_map: auto, remote: false}}")
    unknown = sorted(set(block) - set(RUNTIME_KEYS))
    if unknown:
        raise ParamError(f"{where}: unknown runtime keys {unknown}; known: {', '.join(RUNTIME_KEYS)}")
    dm = block.get("device_map")
    if dm is not None and not isinstance(dm, str):
        raise ParamError(f"{where}: runtime.device_map must be a string such as 'auto' or null, got {dm!r}")
    rm = block.get("remote", False)
    if rm not in (True, False, "local"):
        raise ParamError(f"{where}: runtime.remote must be true, false or 'local', got {rm!r}")
    return {"device_map": dm, "remote": rm}


def load_runtime(notebook: str, profile: str) -> dict[str, str]:
    """The environment a profile's ``runtime:`` block asks for (empty when it has none)."""
    values = yaml.safe_load(profile_path(notebook, profile).read_text()) or {}
    rt = check_runtime(values.get("runtime") if isinstance(values, dict) else None)
    env = {}
    if rt.get("device_map"):
        env[RUNTIME_KEYS["device_map"]] = rt["device_map"]
    if rt.get("remote"):
        env[RUNTIME_KEYS["remote"]] = "local" if rt["remote"] == "local" else "true"
    return env


def load_profile(notebook: str, profile: str) -> dict[str, Any]:
    """The parameters of ``params/<notebook>/<profile>.yaml``, checked against the notebook."""
    notebook_path(notebook)  # an unknown notebook is named before a missing profile
    path = profile_path(notebook, profile)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.exists() else []
        raise ParamError(f"no profile {profile!r} for {notebook}: {path} is missing; have {', '.join(known)}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ParamError(f"{path}: expected a mapping of parameter names to values")
    values = dict(values)
    check_runtime(values.pop("runtime", None), where=str(path))
    declared = parameters_cell(notebook_path(notebook))
    for key in values:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParamError(f"{path}: unknown parameter {key!r}{hint} "
                             f"(the notebook declares {', '.join(declared)})")
    return values
