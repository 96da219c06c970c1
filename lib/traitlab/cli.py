"""``traitlab`` command line: render notebooks with a params profile, list, fetch models.

    traitlab render method_comparison --profile default   # build → execute → HTML → index
    traitlab render all --profile ci --out tests/golden --no-html
    traitlab check method_comparison --profile default    # validate only, no model work
    traitlab fetch smollm2-135m-instruct                  # download + verify a zoo model

A profile is validated (keys, types, ranges, model and sites) before papermill starts.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .atomic import atomic_path, write_text
from .params import ParamError, load_profile, load_runtime, notebook_name, validate
from .paths import PROJECT_ROOT


def notebooks() -> list[str]:
    return sorted(p.stem for p in (PROJECT_ROOT / "notebooks").glob("*.py"))


def check(notebook: str, profile: str) -> dict:
    """Validate a profile fully (no weights loaded); return its parameter values."""
    from .experiments import PARAMS

    values = load_profile(notebook, profile)
    if notebook in PARAMS:
        p = validate(PARAMS[notebook], values, where=f"params/{notebook}/{profile}.yaml")
        if hasattr(p, "check"):
            p.check()
    return values


def build_ipynb(notebook: str) -> Path:
    """jupytext: notebooks/<nb>.py → build/<nb>.ipynb (with a python3 kernelspec)."""
    out = PROJECT_ROOT / "build" / f"{notebook}.ipynb"
    out.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--set-kernel", "python3",
                    "-o", str(out), str(PROJECT_ROOT / "notebooks" / f"{notebook}.py")], check=True)
    return out


def execute(notebook: str, profile: str, out_dir: Path, name: str) -> Path:
    import papermill as pm

    src = build_ipynb(notebook)
    target = out_dir / f"{name}.ipynb"
    with atomic_path(target) as tmp:
        tmp_nb = tmp.with_suffix(".ipynb")
        runtime = load_runtime(notebook, profile)
        saved = {k: os.environ.get(k) for k in runtime}
        os.environ.update(runtime)  # the kernel inherits them; load_model reads them as defaults
        try:
            pm.execute_notebook(str(src), str(tmp_nb), parameters=load_profile(notebook, profile),
                                kernel_name="python3", cwd=str(PROJECT_ROOT / "notebooks"),
                                progress_bar=False, log_output=False)
            tmp_nb.replace(tmp)
        finally:
            tmp_nb.unlink(missing_ok=True)
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return target


def to_html(ipynb: Path) -> Path:
    out = ipynb.with_suffix(".html")
    with atomic_path(out) as tmp:
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--log-level", "WARN",
                        "--output", tmp.name, "--output-dir", str(tmp.parent), str(ipynb)], check=True)
        produced = tmp.parent / (tmp.name + ".html")
        if produced.exists():
            produced.replace(tmp)
    return out


def write_index(report_dir: Path) -> Path:
    """reports/index.html: every report with its parameters, model and date."""
    rows = []
    for nb_path in sorted(report_dir.glob("*.ipynb")):
        meta = json.loads(nb_path.read_text()).get("metadata", {}).get("traitlab", {})
        params = meta.get("params", {})
        rows.append(
            f"<tr><td><a href='{nb_path.stem}.html'>{nb_path.stem}</a></td>"
            f"<td>{html.escape(str(meta.get('profile', '?')))}</td>"
            f"<td>{html.escape(str(params.get('model', '?')))}</td>"
            f"<td>{html.escape(str(meta.get('date', '?')))}</td>"
            f"<td>{html.escape(str(meta.get('seconds', '?')))}</td>"
            f"<td><code>{html.escape(json.dumps(params, sort_keys=True))}</code></td></tr>")
    page = ("<!doctype html><meta charset='utf-8'><title>traitlab reports</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;"
            "vertical-align:top}table{border-collapse:collapse}code{font-size:11px}</style>"
            "<h1>traitlab reports</h1><p>Rendered with <code>make reports</code> (default profiles).</p>"
            "<table><tr><th>report</th><th>profile</th><th>model</th><th>date</th><th>seconds</th>"
            "<th>parameters</th></tr>" + "".join(rows) + "</table>")
    out = report_dir / "index.html"
    write_text(out, page)
    return out


def render(notebook: str, profile: str, out_dir: Path, html_too: bool = True,
           suffix: str | None = None) -> Path:
    """Execute and render; the output is ``<notebook><suffix>.ipynb`` (default suffix: none for
    the default profile, ``.<profile>`` otherwise, so profiles never overwrite each other)."""
    values = check(notebook, profile)
    t0 = time.time()
    if suffix is None:
        suffix = "" if profile == "default" else f".{profile}"
    print(f"[traitlab] {notebook} ({profile}) → {out_dir}/{notebook}{suffix}.ipynb", flush=True)
    nb = execute(notebook, profile, out_dir, notebook + suffix)
    data = json.loads(nb.read_text())
    data["metadata"]["traitlab"] = {"profile": profile, "params": values, "seconds": round(time.time() - t0),
                                    "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    write_text(nb, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    if html_too:
        to_html(nb)
    print(f"[traitlab] done in {time.time() - t0:.0f} s", flush=True)
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="traitlab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="execute notebook(s) with a profile and render HTML")
    r.add_argument("notebook", nargs="+", help="notebook name(s), or 'all'")
    r.add_argument("--profile", default="default")
    r.add_argument("--out", default=str(PROJECT_ROOT / "reports"))
    r.add_argument("--no-html", action="store_true")
    r.add_argument("--suffix", default=None,
                   help="output name suffix (default: none for the default profile, else .<profile>)")
    c = sub.add_parser("check", help="validate a params profile without running the model")
    c.add_argument("notebook")
    c.add_argument("--profile", default="default")
    f = sub.add_parser("fetch", help="download and verify an offline-zoo model")
    f.add_argument("name")
    sub.add_parser("list", help="list notebooks and their profiles")
    sub.add_parser("claims", help="re-derive every README claim from its report (claims.yaml)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "render":
            names = notebooks() if args.notebook == ["all"] else [notebook_name(a) for a in args.notebook]
            out = Path(args.out)
            for name in names:  # validate every profile before any model work
                check(name, args.profile)
            for name in names:
                render(name, args.profile, out, html_too=not args.no_html, suffix=args.suffix)
            if not args.no_html:
                write_index(out)
        elif args.cmd == "check":
            print(json.dumps(check(notebook_name(args.notebook), args.profile), indent=2))
        elif args.cmd == "claims":
            from . import claims

            ledger = claims.load()
            for row in claims.table(ledger):
                ok = row["derived"] is not None and abs(row["derived"] - row["value"]) <= next(
                    c.tolerance for c in ledger if c.id == row["id"])
                print(f"{'ok ' if ok else 'BAD'} {row['id']:<45} {row['value']:>8} (report: {row['derived']}) "
                      f"{row['report']}  model={row['model']} commit={str(row['git_commit'])[:12]} {row['date']}")
            problems = claims.check(ledger)
            for p in problems:
                print("problem:", p, file=sys.stderr)
            return 1 if problems else 0
        elif args.cmd == "fetch":
            from .zoo import dequantized_dir

            print(dequantized_dir(args.name))
        else:
            for name in notebooks():
                profiles = sorted(p.stem for p in (PROJECT_ROOT / "params" / name).glob("*.yaml"))
                print(f"{name}: {', '.join(profiles)}")
    except (ParamError, ValueError) as err:
        print(f"traitlab: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
