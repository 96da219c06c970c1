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
import re
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


RUNTIME_KEYS = {"device_map": "TRAITLAB_DEVICE_MAP", "remote": "TRAITLAB_REMOTE", "device": "TRAITLAB_DEVICE"}
"""A profile's optional ``runtime:`` block: where the model runs, not what the notebook computes.
``traitlab render`` passes it to the kernel as these environment variables, which
``traitlab.models.load_model`` reads as defaults (so any notebook runs sharded or on NDIF
without code changes)."""


def check_runtime(block: Any, where: str = "runtime") -> dict[str, Any]:
    """Validate a ``runtime:`` block: ``device_map`` (null or a transformers device map string such
    as ``auto``), ``device`` (null or one torch device such as ``cuda:0``) and ``remote`` (false,
    true = NDIF, or ``local`` = nnsight's local simulation).

    Example:
        >>> check_runtime({"device": "cuda:0"})
        {'device_map': None, 'remote': False, 'device': 'cuda:0'}
    """
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ParamError(f"{where}: runtime must be a mapping like {{device_map: auto, remote: false}}, "
                         f"got {block!r}")
    unknown = sorted(set(block) - set(RUNTIME_KEYS))
    if unknown:
        raise ParamError(f"{where}: unknown runtime keys {unknown}; known: {', '.join(RUNTIME_KEYS)}")
    dm = block.get("device_map")
    if dm is not None and not isinstance(dm, str):
        raise ParamError(f"{where}: runtime.device_map must be a string such as 'auto' or null, got {dm!r}")
    rm = block.get("remote", False)
    if rm not in (True, False, "local"):
        raise ParamError(f"{where}: runtime.remote must be true, false or 'local', got {rm!r}")
    dev = block.get("device")
    if dev is not None and (not isinstance(dev, str) or not _DEVICE.match(dev)):
        raise ParamError(f"{where}: runtime.device must be a torch device such as 'cpu', 'cuda', "
                         f"'cuda:0' or 'mps', or null, got {dev!r}")
    if dev is not None and dm is not None:
        raise ParamError(f"{where}: runtime.device and runtime.device_map both set; keep one "
                         "(device: one GPU, device_map: sharded)")
    out = {"device_map": dm, "remote": rm}
    if dev is not None:  # only when set: older records compare equal
        out["device"] = dev
    return out


_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|meta)(:\d+)?$")


def runtime_env(rt: dict[str, Any]) -> dict[str, str]:
    """The environment variables a validated runtime block sets for the kernel.

    Example:
        >>> runtime_env({"device_map": None, "remote": "local", "device": "cuda:0"})
        {'TRAITLAB_REMOTE': 'local', 'TRAITLAB_DEVICE': 'cuda:0'}
    """
    env = {}
    if rt.get("device_map"):
        env[RUNTIME_KEYS["device_map"]] = rt["device_map"]
    if rt.get("remote"):
        env[RUNTIME_KEYS["remote"]] = "local" if rt["remote"] == "local" else "true"
    if rt.get("device"):
        env[RUNTIME_KEYS["device"]] = rt["device"]
    return env


def load_runtime(notebook: str, profile: str) -> dict[str, str]:
    """The environment a profile's ``runtime:`` block asks for (empty when it has none)."""
    path = profile_path(notebook, profile)
    values = read_yaml(path)
    rt = check_runtime(values.get("runtime") if isinstance(values, dict) else None, where=str(path))
    return runtime_env(rt)


def load_profile(notebook: str, profile: str) -> dict[str, Any]:
    """The parameters of ``params/<notebook>/<profile>.yaml``, checked against the notebook."""
    notebook_path(notebook)  # an unknown notebook is named before a missing profile
    path = profile_path(notebook, profile)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.exists() else []
        raise ParamError(f"no profile {profile!r} for {notebook}: {path} is missing; have {', '.join(known)}")
    values = read_yaml(path)
    check_runtime(values.pop("runtime", None), where=str(path))
    declared = parameters_cell(notebook_path(notebook))
    for key in values:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParamError(f"{path}: unknown parameter {key!r}{hint} "
                             f"(the notebook declares {', '.join(declared)})")
    return values


# ---- parameter sources: profiles, --params files, --set overrides ------------------------

def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a syntax error or a non-mapping is one ``ParamError`` line
    naming the file, line and column.

    Example:
        >>> import tempfile; f = Path(tempfile.mkdtemp()) / "p.yaml"
        >>> _ = f.write_text("layers: [1, 2\\n")
        >>> read_yaml(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        traitlab.params.ParamError: .../p.yaml:2:1: YAML syntax error (expected ',' or ']', but got '<stream end>' while parsing a flow sequence); fix the file
    """
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"parameter file {path} does not exist; give an existing YAML file")
    try:
        values = yaml.load(path.read_text(), Loader=_UniqueKeys)  # noqa: S506 — a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = " ".join(str(x) for x in (err.problem, err.context) if x)
        raise ParamError(f"{path}{pos}: YAML syntax error ({what}); fix the file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ParamError(f"{path}: not readable as YAML ({str(err).splitlines()[0]}); fix the file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ParamError(f"{path}: expected a mapping of parameter names to values "
                         f"(`name: value` lines), got {type(values).__name__}")
    return dict(values)


class _UniqueKeys(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last value
    without a word, so a file saying ``seed: 1`` and later ``seed: 7`` would run with 7)."""


def _unique_mapping(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in first:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} repeated (first on line {first[key]})", key_node.start_mark)
        first[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``--set key=value`` overrides, each value parsed as YAML (``[8,12,16]`` is a list,
    ``null`` is None, ``qwen`` a string). ``runtime.device=cuda:0`` sets a runtime key.

    Example:
        >>> parse_set(["layers=[8,12,16]", "model=qwen", "revision=null", "runtime.device=cuda:0"])
        {'layers': [8, 12, 16], 'model': 'qwen', 'revision': None, 'runtime': {'device': 'cuda:0'}}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", key):
            raise ParamError(f"--set {item!r}: expected key=value with a parameter name as key, "
                             "e.g. --set layers=[8,12,16]")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ParamError(f"--set {key}: value {raw!r} is not valid YAML ({problem}); quote it, "
                             f"e.g. --set '{key}=\"{raw}\"'") from None
        if "." in key:
            block, sub = key.split(".", 1)
            if block != "runtime":
                raise ParamError(f"--set {key}: only runtime.<key> may be dotted "
                                 f"(e.g. runtime.device=cuda:0)")
            out.setdefault("runtime", {})[sub] = value
        else:
            out[key] = value
    return out


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A notebook's parameters from all sources, with where each key came from.

    ``values`` go to papermill; ``runtime`` is the merged ``runtime:`` block; ``origin`` maps
    each key to the file (or ``--set``) that gave it last.
    """

    notebook: str
    values: dict[str, Any]
    runtime: dict[str, Any]
    origin: dict[str, str]
    label: str
    """The output name's tag: the profile, the ``--params`` file's stem, or ``default``."""

    def where(self, key: str | None = None) -> str:
        if key is not None and key in self.origin:
            return self.origin[key]
        unique = sorted(dict.fromkeys(self.origin.values()), key=lambda w: w.startswith("--set"))
        return " + ".join(unique) or f"notebooks/{self.notebook}.py"

    def env(self) -> dict[str, str]:
        return runtime_env(check_runtime(self.runtime or None, where=self.where("runtime")))


FILE_KEYS = {"questions_file": '{"id", "question", "split"}',
             "instructions_file": '{"trait", "positive", "negative"}'}
"""Parameters naming a JSONL file of one's own, and what each line holds."""

FOLDER_KEYS = {"traits_dir": "<trait>.jsonl prompt sets", "gold_dir": "gold_<trait>.jsonl gold sets"}
"""Parameters naming a folder of one's own files, and what it holds."""

PATH_KEYS = (*FOLDER_KEYS, *FILE_KEYS)
"""Parameters that name a file or folder: a relative path in a parameter file is read from that
file's folder, one in ``--set`` from the current directory."""


def resolve(notebook: str, profile: str | None = None, params: str | Path | None = None,
            sets: dict[str, Any] | None = None) -> Resolved:
    """Merge ``params/<notebook>/<profile>.yaml`` (default ``default`` unless a ``params`` file
    is given), then the ``params`` file (any path), then ``sets``; keys checked against the
    notebook's parameters cell, each unknown one named with its source and the closest name.

    Example:
        >>> r = resolve("method_comparison", "ci", sets={"layers": [1, 2]})
        >>> r.values["layers"], r.origin["layers"], r.label
        ([1, 2], '--set layers', 'ci')
    """
    notebook_path(notebook)
    declared = parameters_cell(notebook_path(notebook))
    values: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    origin: dict[str, str] = {}
    sources: list[tuple[str, dict[str, Any]]] = []
    if profile is not None or params is None:
        profile = profile or "default"
        load_profile(notebook, profile)  # names a missing profile with the ones that exist
        sources.append((str(profile_path(notebook, profile)), read_yaml(profile_path(notebook, profile))))
    if params is not None:
        sources.append((str(params), read_yaml(Path(params).expanduser())))
    if sets:
        sources.append(("--set", dict(sets)))
    for where, src in sources:
        rt = src.pop("runtime", None)
        if rt is not None:
            if not isinstance(rt, dict):
                check_runtime(rt, where=where)
            runtime.update(rt)
            origin["runtime"] = where if where != "--set" else "--set runtime"
            check_runtime(runtime, where=origin["runtime"])
        for key, value in src.items():
            key_where = f"--set {key}" if where == "--set" else where
            if key not in declared:
                close = difflib.get_close_matches(str(key), list(declared), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ParamError(f"{key_where}: unknown parameter {key!r}{hint} "
                                 f"(the notebook declares {', '.join(declared)})")
            if key in PATH_KEYS and isinstance(value, str) and not Path(value).expanduser().is_absolute():
                base = Path.cwd() if where == "--set" else Path(where).parent
                value = str((base / value).resolve())  # the kernel runs in notebooks/
            values[key] = value
            origin[key] = key_where
    label = profile if params is None else (profile if profile not in (None, "default") else
                                            Path(params).stem)
    return Resolved(notebook, values, runtime, origin, label or "default")


def check_types(cls: type, resolved: Resolved) -> None:
    """Each key's type against ``cls``'s hints, the error naming the key's own source."""
    hints = get_type_hints(cls)
    for key, value in resolved.values.items():
        if key in hints and not _type_ok(value, hints[key]):
            raise ParamError(f"{resolved.where(key)}: parameter {key!r} = {value!r} should be "
                             f"{_describe_type(hints[key])}")


DTYPE_KEYS = re.compile(r"^(\w+_)?dtype$")


def check_dtypes(resolved: Resolved) -> None:
    """Every ``dtype`` / ``*_dtype`` value is one ``load_model`` accepts (``bf16`` is not).

    Example:
        >>> check_dtypes(Resolved("x", {"dtype": "bf16"}, {}, {"dtype": "p.yaml"}, "p"))
        Traceback (most recent call last):
        ...
        traitlab.params.ParamError: p.yaml: dtype 'bf16' is not supported; use one of auto, float32, bfloat16, float16
    """
    from . import models

    for key, value in resolved.values.items():
        if DTYPE_KEYS.match(key) and value is not None:
            try:
                models.check_dtype(value, where=key)
            except ValueError as err:
                raise ParamError(f"{resolved.where(key)}: {err}") from None


MODEL_KEYS = re.compile(r"^(\w+_)?model$")


def check_models(resolved: Resolved, defaults: dict[str, Any]) -> None:
    """Every model a notebook will load resolves without weights: a tiny or zoo name, an existing
    folder or ``.gguf`` file, or a hub id (whose config is read by the notebook's own check).
    An HTTP judge (``judge_backend: openai``) names a served model, which is not checked here;
    ``judge`` as another model key's value means the judge's own model."""
    from . import models

    merged = {**defaults, **resolved.values}
    for key, spec in merged.items():
        if not MODEL_KEYS.match(key) or spec is None:
            continue
        if key == "judge_model" and (merged.get("judge_base_url") or merged.get("judge_backend") == "openai"):
            continue
        if spec == "judge" and key != "judge_model":
            continue  # the judge's own model (e.g. probe_model), checked as judge_model
        if isinstance(spec, str) and models._HUB_ID.match(spec) and not Path(spec).expanduser().exists():
            continue  # needs the hub; Params.check() reads its config
        try:
            models.describe(spec)
        except ValueError as err:
            raise ParamError(f"{resolved.where(key)}: {key}: {err}") from None


def check_max_pairs(value: int | None) -> None:
    """The ``max_pairs_per_split`` every report that reads trait pairs takes (``data.load_trait``):
    null (all pairs), or 2 or more per split.

    >>> check_max_pairs(None), check_max_pairs(2)
    (None, None)
    >>> check_max_pairs(1)
    Traceback (most recent call last):
    ...
    traitlab.params.ParamError: max_pairs_per_split must be >= 2 or null (all pairs), got 1
    """
    if value is not None and value < 2:
        raise ParamError(f"max_pairs_per_split must be >= 2 or null (all pairs), got {value}")


def own_folder(key: str, value: str | None) -> Path | None:
    """The folder a ``FOLDER_KEYS`` parameter names (``None``: the shipped one); a missing folder
    is a one-line ``ParamError`` naming the key and what the folder should hold.

    Example:
        >>> own_folder("gold_dir", "/no/such/dir")
        Traceback (most recent call last):
        ...
        traitlab.params.ParamError: gold_dir '/no/such/dir' is not a folder; give a folder of gold_<trait>.jsonl gold sets, or null for the shipped ones
    """
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ParamError(f"{key} {value!r} is not a folder; give a folder of {FOLDER_KEYS[key]}, "
                         "or null for the shipped ones")
    return path


def traits_folder(traits_dir: str | None) -> Path | None:
    """The folder of ``<trait>.jsonl`` prompt sets a ``traits_dir`` parameter names (``None``:
    the shipped ``data/traits``); a missing folder is a one-line ``ParamError``.

    Example:
        >>> traits_folder(None) is None
        True
    """
    return own_folder("traits_dir", traits_dir)
