"""The wheels a lent GPU machine lacks, for ``make device-wheels`` (download here) and the GPU suite (check).

The device (``nvidia-h200``: Python 3.12, torch 2.11 + CUDA 13, CuPy, numba-cuda, Triton, ...) has no
network, so whatever the project imports that its image lacks must travel with the working tree as
wheels, and everything that travels shares one 64 MiB limit per call. The list is **computed**, not
written by hand: the project's runtime requirements (plus :data:`DEVICE_EXTRAS`, what the suite's
checks use) and, recursively, the requirements of each one the device lacks, evaluated for the
device's interpreter, minus :data:`DEVICE_HAS` (the image's package list in the device tool's
``KINDS.md``, read 2026-11-17). Each is pinned to the version installed here, so the device runs what CI
tested (``pydantic`` and ``pydantic-core`` must match exactly). Packages the device has are not
descended into: their own requirements are the image's business.

    python -m tunepp_deploy.bench.gpu_wheels download --dest .whl   # make device-wheels
    python -m tunepp_deploy.bench.gpu_wheels check --dest .whl      # list, sizes, budget; no network
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PROJECT = "tunepp-deploy"
#: What the GPU suite's checks import beyond the runtime requirements (GUDHI: the Betti reference).
DEVICE_EXTRAS = ("gudhi",)
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
#: One call's working tree + carried paths (device README, Limits).
CALL_LIMIT_BYTES = 64 * 2**20
#: Head-room under the limit for files written between ``make device-wheels`` and the call.
MARGIN_BYTES = 4 * 2**20
#: The marker environment of the device's interpreter (CPython 3.12.3 on x86-64 Linux).
DEVICE_ENV = {"python_version": DEVICE_PYTHON, "python_full_version": "3.12.3", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
#: The image's packages (KINDS.md, "Python packages already there", nvidia-h200, read 2026-11-17).
_KINDS_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
"""
DEVICE_HAS = frozenset(_KINDS_LIST.split())


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-`` (how pip and KINDS.md compare names)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    """One wheel to carry: the distribution, the version installed here (None: not installed here), why."""

    name: str
    version: str | None
    required_by: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.version else self.name


def _installed(name: str) -> str | None:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(name)
    return None


def _requirements(name: str) -> list[str]:
    """``name``'s requirements that apply on the device (markers evaluated there, no extras)."""
    from packaging.requirements import Requirement

    out = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(DEVICE_ENV):
                out.append(req.name)
    return out


def needed_wheels(roots: tuple[str, ...] = (PROJECT, *DEVICE_EXTRAS), has: frozenset[str] = DEVICE_HAS) -> list[Pin]:
    """What the device lacks (module docstring), sorted by name."""
    has = frozenset(canonical(h) for h in has)
    seen: dict[str, Pin] = {}
    todo: list[tuple[str, str]] = [(r, "suite") for r in roots]
    while todo:
        name, by = todo.pop()
        key = canonical(name)
        if key in seen or key in has:
            continue
        if key != canonical(PROJECT):  # the project itself is installed from the working tree
            seen[key] = Pin(key, _installed(name), by)
        todo.extend((r, key) for r in _requirements(name))
    return sorted(seen.values(), key=lambda p: p.name)


def pip_download_command(pins: list[Pin], dest: Path, python: str = sys.executable) -> list[str]:
    """The device README's download: binary wheels for CPython 3.12 on manylinux x86-64, no dependencies
    (each needed one is named)."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON,
           "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    return cmd + [p.spec for p in pins]


def index_host() -> str:
    """The host pip downloads from (``PIP_INDEX_URL`` / ``pip config``'s index-url, else PyPI)."""
    import os

    url = os.environ.get("PIP_INDEX_URL", "")
    if not url:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            url = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    return (urlparse(url).hostname or "pypi.org") if url else "pypi.org"


def no_network_reason(host: str | None = None, timeout_s: float = 3.0) -> str | None:
    """Why pip cannot reach its index from here (None when a TCP connection to it opens)."""
    host = host or index_host()
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return None
    except OSError as e:
        return f"no network: cannot reach {host}:443 ({type(e).__name__}: {e})"


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical distribution name, version) from a wheel's file name (PEP 427)."""
    dist, version = path.name.split("-")[:2]
    return canonical(dist), version


def tree_bytes(root: Path) -> int:
    """Bytes of what a device call sends besides carried paths: tracked and untracked-not-ignored files."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    total = 0
    for rel in out.decode().split("\0"):
        p = root / rel
        if rel and p.is_file():
            total += p.stat().st_size
    return total


def inventory(dest: Path, pins: list[Pin], tree: int = 0) -> dict[str, Any]:
    """What ``dest`` holds against ``pins``: missing, extra, duplicated, sizes, and the call budget."""
    files = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    by_name: dict[str, list[str]] = {}
    for f in files:
        by_name.setdefault(wheel_name(f)[0], []).append(f.name)
    wanted = {p.name for p in pins}
    wheel_bytes = sum(f.stat().st_size for f in files)
    budget = CALL_LIMIT_BYTES - MARGIN_BYTES - tree
    return {
        "dest": str(dest), "files": [f.name for f in files], "wheel_bytes": wheel_bytes, "tree_bytes": tree,
        "budget_bytes": budget, "fits": wheel_bytes <= budget,
        "missing": sorted(wanted - set(by_name)), "extra": sorted(set(by_name) - wanted),
        "duplicates": sorted(n for n, fs in by_name.items() if len(fs) > 1),
        "version_mismatch": sorted(p.name for p in pins if p.name in by_name and p.version
                                   and not any(f"-{p.version}-" in f for f in by_name[p.name])),
    }


def plan(dest: Path, root: Path | None = None) -> dict[str, Any]:
    """The wheel list, the download command and ``dest``'s inventory (what the dry run checks)."""
    pins = needed_wheels()
    tree = tree_bytes(root) if root else 0
    return {"pins": [asdict(p) for p in pins], "command": pip_download_command(pins, dest),
            "inventory": inventory(dest, pins, tree)}


def download(dest: Path, root: Path | None = None, log: Any = print) -> dict[str, Any]:
    """``make device-wheels``: download the missing wheels into ``dest``; without network, say why and stop."""
    p = plan(dest, root)
    log("wheels the device lacks: " + ", ".join(f"{x['name']}=={x['version']}" for x in p["pins"]))
    todo = [Pin(**x) for x in p["pins"] if x["name"] in p["inventory"]["missing"]
            or x["name"] in p["inventory"]["version_mismatch"]]
    if not todo:
        log("all present")
    else:
        why = no_network_reason()
        if why:
            log(f"skipping the download: {why}")
            p["skipped"] = why
            return p
        dest.mkdir(parents=True, exist_ok=True)
        for f in dest.glob("*.whl"):  # a stale version next to the pinned one would stop the install there
            if wheel_name(f)[0] in {t.name for t in todo}:
                f.unlink()
        subprocess.run(pip_download_command(todo, dest), check=True)
    p["inventory"] = inventory(dest, needed_wheels(), p["inventory"]["tree_bytes"])
    inv = p["inventory"]
    log(f"{len(inv['files'])} wheels, {inv['wheel_bytes'] / 2**20:.1f} MiB + tree {inv['tree_bytes'] / 2**20:.1f} MiB "
        f"(budget {inv['budget_bytes'] / 2**20:.1f} MiB for wheels): {'fits' if inv['fits'] else 'TOO LARGE'}")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("download", "check"))
    ap.add_argument("--dest", type=Path, default=Path(".whl"))
    ap.add_argument("--root", type=Path, default=Path("."), help="repository root (for the tree's size)")
    args = ap.parse_args(argv)
    if args.action == "download":
        p = download(args.dest, args.root)
        return 0 if p.get("skipped") or p["inventory"]["fits"] else 1
    p = plan(args.dest, args.root)
    print(json.dumps(p, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
