"""A virtual environment of its own for the peer libraries (steering-vectors, repeng).

Both peers pin libraries older than ours (steering-vectors: transformers < 5; repeng:
numpy < 2), so they cannot share traitlab's environment. The peer environment installs
its own transformers / numpy / scikit-learn and the two peers, but *not* torch: a ``.pth``
file appends traitlab's site-packages after its own, so the peers run on the very same
torch build (same kernels, same thread pool) and only the Python libraries differ. Torch
from PyPI on Linux is the multi-gigabyte CUDA build; sharing ours also keeps the set-up
to about a minute.

    python benchmarks/peer_env.py            # create (or reuse) build/peer-venv, print its python
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "peer-venv"
# Exact pins: the benchmark compares against these releases.
PEERS = ("steering-vectors==0.12.2", "repeng==0.4.0")
PEER_DEPS = ("transformers==4.57.1", "numpy==1.26.4", "scikit-learn==1.5.2", "gguf==0.17.1",
             "tqdm", "safetensors")


def peer_python(venv_dir: Path = VENV) -> Path:
    """The peer environment's python, creating the environment on first use."""
    py = venv_dir / "bin" / "python"
    stamp = venv_dir / ".installed"
    wanted = "\n".join(PEERS + PEER_DEPS) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return py
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Dependencies first (none of them needs torch), then the peers without their deps so pip
    # never pulls a second torch; torch comes from traitlab's environment through the .pth.
    subprocess.run(pip + list(PEER_DEPS), check=True)
    subprocess.run(pip + ["--no-deps"] + list(PEERS), check=True)
    site = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "zz_traitlab_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-c", "import torch, transformers, numpy, steering_vectors, repeng"], check=True)
    stamp.write_text(wanted)
    return py


if __name__ == "__main__":
    print(peer_python())
    sys.exit(0)
