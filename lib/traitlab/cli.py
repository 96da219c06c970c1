"""``traitlab`` command line: render notebooks with a params profile, list, fetch models.

    traitlab render method_comparison --profile default   # build → execute → HTML → index
    traitlab render all --profile ci --out tests/golden --no-html
    traitlab check method_comparison --profile default    # validate only, no model work
    traitlab render cross_topic --profile ci --set layers=[4,8] --params ~/my.yaml
    traitlab fetch smollm2-135m-instruct [--verify]       # download + verify a zoo model
    traitlab datasets fetch --dest ~/datasets             # the public datasets, sha256-pinned

Parameters come from the profile, then a ``--params`` file (any path), then each ``--set
key=value`` (read as YAML). They are validated (keys, types, dtypes, models, ranges, sites)
before papermill starts; every error is one line naming the file or ``--set`` key.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import html
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import cachelog, datasets, runinfo
from .atomic import atomic_path, sha256_file, write_text
from .params import (
    FILE_KEYS,
    FOLDER_KEYS,
    ParamError,
    Resolved,
    check_dtypes,
    check_models,
    check_types,
    notebook_name,
    own_folder,
    parse_set,
    profile_path,
    resolve,
    validate,
)
from .paths import PROJECT_ROOT, build_root, data_root, reports_root


def notebooks() -> list[str]:
    return sorted(p.stem for p in (PROJECT_ROOT / "notebooks").glob("*.py"))


class RenderError(RuntimeError):
    """A notebook whose execution failed (the partly executed notebook is kept)."""


def check_resolved(r: Resolved) -> dict:
    """Validate resolved parameters fully, without loading weights: keys (done by ``resolve``),
    the runtime block, each key's type, dtype names, every model spec, then the notebook's own
    checks (ranges, layers against the model's config, sites, prompt sets). Returns the values."""
    from .experiments import PARAMS
    from .models import check_device

    env = r.env()
    if "TRAITLAB_DEVICE" in env:
        try:
            check_device(env["TRAITLAB_DEVICE"], where="runtime.device")
        except ValueError as err:
            raise ParamError(f"{r.where('runtime')}: {err}") from None
    check_dtypes(r)
    cls = PARAMS.get(r.notebook)
    if cls is None:
        return r.values
    check_types(cls, r)
    check_models(r, dataclasses.asdict(cls()))
    for key in FOLDER_KEYS:
        try:
            own_folder(key, r.values.get(key))
        except ParamError as err:
            raise ParamError(f"{r.where(key)}: {err}") from None
    for key, lines in FILE_KEYS.items():
        if (f := r.values.get(key)) is not None and not Path(f).expanduser().is_file():
            raise ParamError(f"{r.where(key)}: {key} {f!r} is not a file; give a JSONL file of {lines} lines, "
                             "or null for the shipped one")
    p = validate(cls, r.values, where=r.where())
    if hasattr(p, "check"):
        try:
            p.check()
        except ValueError as err:
            msg = str(err)
            raise ParamError(msg if msg.startswith(r.where()) else f"{r.where()}: {msg}") from None
    return r.values


def check(notebook: str, profile: str | None = "default", *, params: str | Path | None = None,
          sets: dict | None = None) -> dict:
    """Validate a profile (and/or a ``--params`` file and ``--set`` overrides) fully, no weights
    loaded; return the parameter values papermill will inject."""
    return check_resolved(resolve(notebook, profile, params, sets))


def build_ipynb(notebook: str, build_dir: Path | None = None) -> Path:
    """jupytext: notebooks/<nb>.py → build/<nb>.ipynb (with a python3 kernelspec)."""
    out = (build_dir or build_root()) / f"{notebook}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--set-kernel", "python3",
                    "-o", str(out), str(PROJECT_ROOT / "notebooks" / f"{notebook}.py")], check=True)
    return out


def _progress_engine(label: str, log=print) -> str:
    """Register a papermill engine that prints ``[traitlab] <label> cell i/n (t s)`` as each code
    cell starts, from this process (nothing of it reaches the executed notebook)."""
    from papermill.engines import NBClientEngine, papermill_engines

    class Progress(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            code = [i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"]
            t0 = time.time()
            start = nb_man.cell_start

            def cell_start(cell, cell_index=None, **kw):
                if cell_index in code:
                    log(f"[traitlab] {label} cell {code.index(cell_index) + 1}/{len(code)} "
                        f"({time.time() - t0:.0f} s)", flush=True)
                return start(cell, cell_index, **kw)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("traitlab-progress", Progress)
    return "traitlab-progress"


def clean_temps(out_dir: Path, name: str) -> list[Path]:
    """Remove what a killed render of ``name`` left in ``out_dir`` (``.<name>.ipynb.*.tmp*``,
    ``.<name>.html.*.tmp*``); return the removed paths."""
    removed = []
    for pattern in (f".{name}.ipynb.*.tmp*", f".{name}.html.*.tmp*"):
        for p in out_dir.glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def failed_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.failed.ipynb"


def execute(notebook: str, profile: str | Resolved, out_dir: Path, name: str, *,
            progress: bool = True, env: dict[str, str] | None = None) -> Path:
    """Run the notebook with papermill into ``out_dir/<name>.ipynb`` (atomically); ``env``: more
    variables for its kernel. A failing cell keeps the partly executed notebook as
    ``<name>.failed.ipynb`` and raises ``RenderError``."""
    import papermill as pm

    r = profile if isinstance(profile, Resolved) else resolve(notebook, profile)
    src = build_ipynb(notebook)
    target = out_dir / f"{name}.ipynb"
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in clean_temps(out_dir, name):
        print(f"[traitlab] removed {p.name}, left by an interrupted render", flush=True)
    # the kernel inherits these: load_model reads the runtime block, records.publish writes the
    # result record beside the report as <name>.results.json
    runtime = {**r.env(), "TRAITLAB_RECORD_DIR": str(out_dir.resolve()), "TRAITLAB_RECORD_NAME": name,
               "TRAITLAB_PROFILE": r.label,
               "TRAITLAB_GOLDEN_DIR": "",  # a render writes its record; only tests compare it
               "TRAITLAB_PROGRESS": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # no bars in reports
               **(env or {})}
    engine = _progress_engine(notebook) if progress else None
    with atomic_path(target) as tmp:
        tmp_nb = tmp.with_name(tmp.name + ".ipynb")  # .<name>.ipynb.XXXX.tmp.ipynb: never indexed
        saved = {k: os.environ.get(k) for k in runtime}
        os.environ.update(runtime)  # the kernel inherits them; load_model reads them as defaults
        try:
            pm.execute_notebook(str(src), str(tmp_nb), parameters=r.values, kernel_name="python3",
                                cwd=str(PROJECT_ROOT / "notebooks"), progress_bar=False,
                                log_output=False, engine_name=engine)
            tmp_nb.replace(tmp)
        except pm.PapermillExecutionError as err:
            kept = failed_path(out_dir, name)
            if tmp_nb.exists():
                os.replace(tmp_nb, kept)
            where = f"kept at {kept}" if kept.exists() else "no partial notebook was written"
            evalue = str(err.evalue).strip().splitlines()[-1] if str(err.evalue).strip() else ""
            raise RenderError(f"{notebook} failed in cell {err.exec_count} ({err.ename}: {evalue}); "
                              f"the partly executed notebook is {where}") from None
        except Exception as err:  # the kernel died, a timeout, ...: keep what ran, one line
            kept = failed_path(out_dir, name)
            if tmp_nb.exists():
                os.replace(tmp_nb, kept)
            where = f"kept at {kept}" if kept.exists() else "no partial notebook was written"
            first = (str(err).strip().splitlines() or [""])[0]
            raise RenderError(f"{notebook} stopped ({type(err).__name__}: {first}); the partly "
                              f"executed notebook is {where}") from None
        finally:
            tmp_nb.unlink(missing_ok=True)
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    failed_path(out_dir, name).unlink(missing_ok=True)
    return target


def to_html(ipynb: Path) -> Path:
    """The reader's HTML (``traitlab.reportview``): verdicts first, offline, no test markers."""
    from .reportview import render_html

    return render_html(ipynb)


def indexable(report_dir: Path) -> list[Path]:
    """The reports ``index.html`` lists: ``*.ipynb`` that are not hidden, temporary or failed."""
    return [p for p in sorted(report_dir.glob("*.ipynb"))
            if not p.name.startswith(".") and ".tmp" not in p.name
            and not p.name.endswith(".failed.ipynb")]


_NOT_CODE = {"parameters", "injected-parameters"}


def _code_cells(nb) -> list[str]:
    """The code a notebook runs, cell by cell, less its parameter cells (they differ by design)."""
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"
            and not _NOT_CODE & set(c.metadata.get("tags", []))]


def notebook_drift(ipynb: Path, notebooks_dir: Path | None = None) -> str | None:
    """Why the rendered report ``ipynb`` no longer shows what its notebook runs, or None when its
    code cells equal the notebook's (``notebooks/<name>.py``, name = the report's stem before its
    first dot; parameter cells left out). Library changes are not seen here: the result checks
    (``records.compare``) are what catch those.

    Example:
        >>> notebook_drift(Path("reports/no_such_report.profile.ipynb"))
        'no notebook no_such_report.py for it'
    """
    import jupytext
    import nbformat

    src = (notebooks_dir or PROJECT_ROOT / "notebooks") / f"{ipynb.name.split('.')[0]}.py"
    if not src.exists():
        return f"no notebook {src.name} for it"
    try:
        ran = _code_cells(nbformat.read(ipynb, as_version=4))
    except (OSError, ValueError, KeyError, AttributeError) as err:  # missing, not JSON, not a notebook
        return f"unreadable ({type(err).__name__})"
    now = _code_cells(jupytext.read(src))
    if ran == now:
        return None
    first = next((i for i, (a, b) in enumerate(zip(ran, now, strict=False)) if a != b), min(len(ran), len(now)))
    return (f"{src.name} changed since this render (code cell {first + 1} of {len(now)} differs"
            + (f"; {len(ran)} cells ran, {len(now)} now)" if len(ran) != len(now) else ")"))


def data_drift(record_path: Path) -> str | None:
    """Why the data a report read (its record's ``run.data``: file label → sha256) is no longer
    what is on disk, or None when every file it read is unchanged: a prompt or gold set we ship
    edited since, or a public dataset under today's data root that differs from the one read
    (a public file absent here is not drift). Reports rendered before records kept their data
    files say so instead of passing.

    Example:
        >>> data_drift(Path("reports/no_such_report.results.json"))
        'no result record'
    """
    from .data import labelled_path

    try:
        run = json.loads(record_path.read_text()).get("run", {})
    except FileNotFoundError:
        return "no result record"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        return f"unreadable record ({type(err).__name__})"
    read = run.get("data")
    if read is None:
        return "data files not recorded (rendered before records kept them)"
    changed, missing = [], []
    for label, digest in read.items():
        path, ours = labelled_path(label)
        if not path.is_file():
            if ours:
                missing.append(label)
            continue
        if sha256_file(path) != digest:
            changed.append(label)
    if not changed and not missing:
        return None
    parts = ([f"{', '.join(changed)} changed"] if changed else []) + ([f"{', '.join(missing)} gone"] if missing else [])
    return "; ".join(parts) + " since this render"


def _model_of(params: dict) -> str:
    """The model a report ran on: ``model``, else the first ``*_model`` parameter."""
    if params.get("model"):
        return str(params["model"])
    return str(next((v for k, v in params.items() if k.endswith("model") and v), "?"))


_VERDICT_COLOUR = {"holds": "#1b7837", "not held": "#b2182b", "inconclusive": "#8c6d00",
                   "not comparable": "#666"}


def _matrix_rows(stem: str, record_path: Path, fallback_model: str) -> list[str]:
    from .records import RecordError, format_quantity, read

    try:
        rec = read(record_path)
    except RecordError as err:
        print(f"[traitlab] {err}; its claims are left out of the index", file=sys.stderr, flush=True)
        return []
    rows = []
    for c in rec.claims:
        ours = c.ours or (format_quantity(rec[c.quantity]) if c.quantity else "")
        colour = _VERDICT_COLOUR.get(c.verdict, "#000")
        rows.append(f"<tr><td>{html.escape(c.statement)}</td><td>{html.escape(rec.model or fallback_model)}</td>"
                    f"<td>{html.escape(c.seed)}</td><td>{html.escape(ours)}</td>"
                    f"<td style='color:{colour};font-weight:bold'>{html.escape(c.verdict)}</td>"
                    f"<td>{html.escape(c.reason)}</td><td><a href='{stem}.html'>{stem}</a></td></tr>")
    return rows


def _computed(cache: dict | None) -> str:
    """A render's cache line for the index: "0 of 3,388" (all read back), "?" when not recorded.

    >>> _computed({"judge replies": {"read": 3, "computed": 1}}), _computed(None)
    ('1 of 4', '?')
    """
    if cache is None:
        return "?"
    done, total = cachelog.totals(cache)
    return f"{done:,} of {total:,}"


def write_index(report_dir: Path) -> Path:
    """reports/index.html: the replication matrix (one row per seed claim × model, from each
    report's result record: seed's value, ours, verdict, reason, link), then every report with its
    model, commit, date, seconds, whether it still shows its notebook's code (``notebook_drift``)
    and read today's data (``data_drift``), and its parameters (an unreadable notebook is named and
    left out)."""
    rows, matrix = [], []
    for nb_path in indexable(report_dir):
        try:
            meta = json.loads(nb_path.read_text()).get("metadata", {}).get("traitlab", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            print(f"[traitlab] {nb_path} is not a readable notebook (truncated?); left out of the index",
                  file=sys.stderr, flush=True)
            continue
        params = meta.get("params", {})
        model = _model_of(params)
        record_path = report_dir / f"{nb_path.stem}.results.json"
        commit = "?"
        if record_path.exists():
            matrix += _matrix_rows(nb_path.stem, record_path, model)
            try:
                commit = str(json.loads(record_path.read_text()).get("run", {}).get("git_commit", "?"))[:12]
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                pass
        rows.append(
            f"<tr><td><a href='{nb_path.stem}.html'>{nb_path.stem}</a></td>"
            f"<td>{html.escape(str(meta.get('profile', '?')))}</td>"
            f"<td>{html.escape(model)}</td><td><code>{html.escape(commit)}</code></td>"
            f"<td>{html.escape(str(meta.get('date', '?')))}</td>"
            f"<td>{html.escape(str(meta.get('seconds', '?')))}</td>"
            f"<td>{html.escape(_computed(meta.get('cache')))}</td>"
            f"<td>{html.escape(notebook_drift(nb_path) or 'current')}</td>"
            f"<td>{html.escape(data_drift(record_path) or 'current')}</td>"
            f"<td><code>{html.escape(json.dumps(params, sort_keys=True))}</code></td></tr>")
    no_matrix = ("<p>No report here has a result record yet: re-render them "
                 "(<code>make reports</code>) to fill the matrix.</p>")
    page = ("<!doctype html><meta charset='utf-8'><title>traitlab reports</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;"
            "vertical-align:top}table{border-collapse:collapse}code{font-size:11px}</style>"
            "<h1>traitlab: replication matrix</h1>"
            "<p>One row per seed claim and model, from each report's result record "
            "(<code>&lt;report&gt;.results.json</code>). A claim is <b>not held</b> only where the report "
            "shows it could have seen the effect (a positive control, or a minimum detectable effect below "
            "the seed's); otherwise it is <b>inconclusive</b>.</p>"
            + ("<table><tr><th>seed claim</th><th>model</th><th>seed</th><th>ours</th><th>verdict</th>"
               "<th>why</th><th>report</th></tr>" + "".join(matrix) + "</table>" if matrix else no_matrix)
            + "<h2>Reports</h2><p>Rendered with <code>make reports</code> (default profiles).</p>"
            "<table><tr><th>report</th><th>profile</th><th>model</th><th>commit</th><th>date</th>"
            "<th>seconds</th><th>computed</th><th>code</th><th>data</th><th>parameters</th></tr>" + "".join(rows)
            + "</table><p><i>computed</i>: of what the render looked up in the caches (judge replies, generated "
            "answers, perplexities, activations, the model chain: <code>traitlab.cachelog</code>), how much it "
            "computed rather than read back; a cold render computes all, ? marks renders made before this was "
            "recorded.</p>")
    out = report_dir / "index.html"
    write_text(out, page)
    return out


def gold_line(values: dict) -> str | None:
    """With a ``gold_dir``, where each trait the parameters name (``trait``, ``traits``,
    ``gold_traits``) reads its gold set from (``judge_power.gold_sources``); None without one."""
    if values.get("gold_dir") is None:
        return None
    from .judge_power import gold_sources

    named = [values.get("trait"), *(values.get("traits") or []), *(values.get("gold_traits") or [])]
    return gold_sources([t for t in named if t], values["gold_dir"])


def render(notebook: str, profile: str | None = "default", out_dir: Path | None = None,
           html_too: bool = True, suffix: str | None = None, *, params: str | Path | None = None,
           sets: dict | None = None, progress: bool = True) -> Path:
    """Execute and render; the output is ``<notebook><suffix>.ipynb`` (default suffix: none for
    the default profile, ``.<profile>`` otherwise (or ``.<params file stem>``), so profiles never
    overwrite each other)."""
    r = resolve(notebook, profile, params, sets)
    values = check_resolved(r)
    out_dir = Path(out_dir) if out_dir is not None else reports_root()
    t0 = time.time()
    if suffix is None:
        suffix = "" if r.label == "default" else f".{r.label}"
    print(f"[traitlab] {notebook} ({r.where()}) → {out_dir}/{notebook}{suffix}.ipynb", flush=True)
    if (line := gold_line(values)) is not None:
        print(f"[traitlab] {line}", flush=True)
    with tempfile.TemporaryDirectory() as d:  # what the kernel read from the caches, what it computed
        log = Path(d) / "cache.jsonl"
        nb = execute(notebook, r, out_dir, notebook + suffix, progress=progress, env={cachelog.ENV: str(log)})
        cache = cachelog.summary(log)
    data = json.loads(nb.read_text())
    data["metadata"]["traitlab"] = {"profile": r.label, "params": values, "seconds": round(time.time() - t0),
                                    "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                                    "cache": cache}
    if r.origin and any(o != str(profile_path(notebook, r.label)) for o in r.origin.values()):
        data["metadata"]["traitlab"]["sources"] = r.where()
    write_text(nb, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    if html_too:
        to_html(nb)
    for line in notebook_warnings(data):
        print(f"[traitlab] {notebook}: {line}", file=sys.stderr, flush=True)
    print(f"[traitlab] done in {time.time() - t0:.0f} s; {cachelog.line(cache)}", flush=True)
    return nb


def notebook_warnings(nb: dict, limit: int = 5) -> list[str]:
    """The warnings a rendered notebook's cells wrote to stderr (a damaged cache entry recomputed,
    a judge asked again), so the terminal shows them too: a clean render writes none. At most
    ``limit`` lines, then a count of the rest.

    >>> text = "/x/gencache.py:88: UserWarning: generation cache entry g.json unreadable"
    >>> cell = {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stderr", "text": text}]}
    >>> notebook_warnings({"cells": [cell]})
    ['warning: generation cache entry g.json unreadable']
    """
    found = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", ""))
                found += [f"warning: {m.group(1).strip()}" for m in re.finditer(r"Warning: (.+)", text)]
    return found[:limit] + ([f"… and {len(found) - limit} more warnings in the notebook"] if len(found) > limit else [])


def missing_inputs(notebook: str, values: dict) -> str | None:
    """One line naming the public files a notebook needs and the data root lacks, and how to get
    them; ``None`` when nothing is missing."""
    gone = datasets.missing(datasets.needed(notebook, values))
    if not gone:
        return None
    files = ", ".join(f"{n} ({datasets.MANIFEST[n].path})" for n in gone)
    return f"{notebook} needs {files} under the data root {data_root()}; {datasets.how_to_get()}"


def _add_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None,
                   help="params/<notebook>/<profile>.yaml (default: 'default' unless --params is given)")
    p.add_argument("--params", default=None, metavar="PATH",
                   help="a YAML parameter file anywhere on disk (over the profile, if one is given)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="override one parameter, the value read as YAML (repeatable; applied last), "
                        "e.g. --set layers=[8,12,16] --set runtime.device=cuda:0")


def check_out_dir(out: Path) -> None:
    """A one-line ``RenderError`` unless ``out`` is (or can be made) a folder this process can
    write in, found before any model work.

    >>> check_out_dir(Path("/proc/traitlab-out"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    traitlab.cli.RenderError: --out /proc/traitlab-out cannot be created (...); choose another folder
    """
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RenderError(f"--out {out}: {blocker} is a file, not a folder; choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RenderError(f"--out {out} cannot be created ({err.strerror or err}); choose another folder") from None
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".traitlab-write-test-"):
            pass
    except OSError as err:
        raise RenderError(f"--out {out} is not writable ({err.strerror or err}); choose another folder") from None


def _render_cmd(args: argparse.Namespace) -> int:
    everything = args.notebook == ["all"]
    names = notebooks() if everything else [notebook_name(a) for a in args.notebook]
    sets = parse_set(args.sets)
    if args.params is not None and not Path(args.params).expanduser().is_file():
        raise ParamError(f"--params {args.params}: no such file; give the path of a YAML parameter file")
    out = Path(args.out) if args.out else reports_root()
    check_out_dir(out)
    todo, skipped = [], []
    for name in names:  # validate every profile before any model work
        r = resolve(name, args.profile, args.params, sets)
        why = missing_inputs(name, r.values) if everything else None
        if why is None:
            try:
                check_resolved(r)
            except ValueError as err:  # in `all`, a notebook that cannot run is skipped, named
                if not everything:
                    raise
                why = f"{name} cannot run: {err}"
        if why:
            print(f"[traitlab] skipping {why}", flush=True)
            skipped.append((name, why))
            continue
        todo.append(name)
    dirty = runinfo.dirty_files()
    if dirty and out.resolve() == (PROJECT_ROOT / "reports").resolve() and not args.allow_dirty:
        raise RenderError(f"the working tree has {len(dirty)} uncommitted change(s) (e.g. {dirty[0]}): a committed "
                          "report must name a real commit; commit first, or pass --allow-dirty (the run "
                          "record then says +dirty)")
    failed = []
    for name in todo:
        try:
            render(name, args.profile, out, html_too=not args.no_html, suffix=args.suffix,
                   params=args.params, sets=sets)
        except RenderError as err:
            if not everything:
                raise
            print(f"traitlab: error: {err}", file=sys.stderr, flush=True)
            failed.append(name)
    if not args.no_html:
        write_index(out)
    if skipped:
        print(f"[traitlab] rendered {len(todo) - len(failed)} of {len(names)}; skipped "
              f"{len(skipped)} for missing inputs: {', '.join(n for n, _ in skipped)}", flush=True)
        for _, why in skipped:
            print(f"[traitlab]   {why}", flush=True)
    if failed:
        print(f"traitlab: error: failed: {', '.join(failed)} (see the .failed.ipynb next to each)",
              file=sys.stderr)
        return 1
    return 0 if todo else 1


def _fetch_cmd(args: argparse.Namespace) -> int:
    from . import zoo

    if args.verify:
        report = zoo.verify(args.name, full=True, repair=True)
        for line in getattr(report, "lines", lambda: [str(report)])():
            print(line)
        return 0 if getattr(report, "ok", True) else 1
    else:
        print(zoo.dequantized_dir(args.name))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="traitlab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="execute notebook(s) with a profile and render HTML")
    r.add_argument("notebook", nargs="+", help="notebook name(s), or 'all'")
    _add_sources(r)
    r.add_argument("--out", default=None, help="output folder (default: the repository's reports/)")
    r.add_argument("--no-html", action="store_true")
    r.add_argument("--allow-dirty", action="store_true",
                   help="render into reports/ from a tree with uncommitted changes (recorded as +dirty)")
    r.add_argument("--suffix", default=None,
                   help="output name suffix (default: none for the default profile, else .<profile>)")
    c = sub.add_parser("check", help="validate parameters without running the model")
    c.add_argument("notebook")
    _add_sources(c)
    f = sub.add_parser("fetch", help="download and verify an offline-zoo model")
    f.add_argument("name")
    f.add_argument("--verify", action="store_true",
                   help="re-hash every cached file and repair what differs from its pin")
    d = sub.add_parser("datasets", help="fetch or verify the public datasets in the data root")
    d.add_argument("action", choices=["fetch", "verify"])
    d.add_argument("names", nargs="*", help=f"files (default: all of {', '.join(datasets.MANIFEST)})")
    d.add_argument("--dest", default=None, help="data root (default: $TRAITLAB_DATA_ROOT)")
    d.add_argument("--mirror", default=None, metavar="URL", help="fetch URL/<path> instead of the sources")
    sub.add_parser("list", help="list notebooks and their profiles")
    sub.add_parser("claims", help="every README figure read from its result record (claims.yaml), checked against the README")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "render":
            return _render_cmd(args)
        elif args.cmd == "check":
            values = check(notebook_name(args.notebook), args.profile, params=args.params,
                           sets=parse_set(args.sets))
            print(json.dumps(values, indent=2))
            if (line := gold_line(values)) is not None:
                print(line, file=sys.stderr)
        elif args.cmd == "datasets":
            unknown = [n for n in args.names if n not in datasets.MANIFEST]
            if unknown:
                raise ParamError(f"unknown dataset(s) {unknown}; known: {', '.join(datasets.MANIFEST)}")
            return datasets.main(args)
        elif args.cmd == "claims":
            from . import claims

            ledger = claims.load()
            for row in claims.table(ledger):
                print(f"{row['id']:<45} {row['phrase'] or '(missing)':<40} {row['report']}:{row['quantity']} "
                      f"model={row['model']} commit={str(row['git_commit'])[:12]} {row['date']}")
            problems = claims.check(ledger)
            for p in problems:
                print("problem:", p, file=sys.stderr)
            return 1 if problems else 0
        elif args.cmd == "fetch":
            return _fetch_cmd(args)
        else:
            for name in notebooks():
                profiles = sorted(p.stem for p in (PROJECT_ROOT / "params" / name).glob("*.yaml"))
                print(f"{name}: {', '.join(profiles)}")
    except (ParamError, ValueError, RenderError, OSError) as err:
        msg = " ".join(str(err).split("\n")[:1]) or type(err).__name__
        print(f"traitlab: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("traitlab: interrupted; temporary files are removed on the next render", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
