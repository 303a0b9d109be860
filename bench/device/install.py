"""Install the project on a lent GPU machine: carried wheels, then the working tree, no network.

Standard library only (it runs before anything of the project is importable), under the image's own
``python3`` (the one that holds torch). Steps:

1. ``pip install --no-index --no-deps --target TARGET WHEELS/*.whl`` — what ``make device-wheels``
   downloaded for the device's Python (``tunepp_deploy.bench.gpu_wheels``); none there is not an error
   (the suite then reports what is missing);
2. the project from the working tree: ``pip install --no-index --no-deps --no-build-isolation --target``
   (a real build with the image's setuptools); if that fails (an image setuptools older than the
   ``setuptools>=77`` the pyproject needs, say) the **copy** fallback lays the packages out as the
   pyproject's ``package-dir`` maps them (``kernels/`` -> ``tunepp_deploy/kernels`` ...), which is
   what the wheel would hold;
3. a check in a fresh interpreter that ``tunepp_deploy`` and its mapped subpackages import from
   TARGET (not from the working tree), and which of the needed modules are present.

It writes a JSON record (``--record``) that ``tunepp bench gpu --install-record`` puts in its report,
and prints the ``PYTHONPATH`` to use.

    python3 bench/device/install.py --wheels .whl --target /tmp/tunepp_site --record /tmp/install.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy fallback reads the package map another way
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
#: Modules the suite needs that the device image lacks (import names of gpu_wheels' list).
NEEDED_MODULES = ("nibabel", "pydantic", "gudhi")
VERIFY = ("import tunepp_deploy, tunepp_deploy.kernels, tunepp_deploy.bench, tunepp_deploy.export, "
          "tunepp_deploy.configs, importlib.resources as r; import pathlib; "
          "p = pathlib.Path(tunepp_deploy.__file__).parent; "
          "assert (r.files('tunepp_deploy.kernels') / 'edt.cu').is_file(); print(p)")


def run(cmd: list[str], log: list[dict], timeout: float = 300) -> bool:
    """Run ``cmd``; record its exit status and the tail of its output."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        ok, tail = p.returncode == 0, (p.stdout + p.stderr)[-1500:]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, tail = False, f"{type(e).__name__}: {e}"
    log.append({"cmd": " ".join(cmd), "ok": ok, "seconds": round(time.perf_counter() - t0, 2), "tail": tail})
    print(("ok   " if ok else "FAIL ") + " ".join(cmd[:6]) + (" ..." if len(cmd) > 6 else ""), flush=True)
    if not ok:
        print(tail, flush=True)
    return ok


def package_map(root: Path = ROOT) -> tuple[list[str], dict[str, str]]:
    """The pyproject's ``[tool.setuptools] packages`` and ``package-dir``."""
    text = (root / "pyproject.toml").read_text()
    if tomllib is None:
        raise RuntimeError("the copy fallback needs Python >= 3.11 (tomllib)")
    st = tomllib.loads(text)["tool"]["setuptools"]
    return list(st["packages"]), dict(st.get("package-dir", {}))


def copy_install(target: Path, root: Path = ROOT) -> list[str]:
    """Lay the packages out under ``target`` as the wheel would (module docstring, step 2)."""
    packages, dirs = package_map(root)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    shutil.rmtree(target / "tunepp_deploy", ignore_errors=True)
    done = []
    for pkg in sorted(packages, key=lambda p: p.count(".")):  # parents first, mapped children replace copies
        src = root / dirs[pkg] if pkg in dirs else root / Path(*pkg.split("."))
        dst = target / Path(*pkg.split("."))
        if pkg in dirs or pkg == "tunepp_deploy":
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=ignore)
            done.append(pkg)
    return done


def install(wheels: Path, target: Path, mode: str, python: str = sys.executable) -> dict:
    """Steps 1-3 of the module docstring; returns the record."""
    t0 = time.perf_counter()
    target.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    rec: dict = {"target": str(target), "python": python, "wheels_dir": str(wheels), "steps": log}
    whl = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    rec["wheels"] = [w.name for w in whl]
    pip = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--upgrade", "--target", str(target)]
    rec["wheels_ok"] = run([*pip, *(str(w) for w in whl)], log) if whl else None
    used = None
    if mode in ("auto", "pip") and run([*pip, "--no-build-isolation", str(ROOT)], log):
        used = "pip"
    if used is None and mode in ("auto", "copy"):
        try:
            rec["copied"] = copy_install(target)
            used = "copy"
        except (OSError, RuntimeError, KeyError) as e:
            log.append({"cmd": "copy fallback", "ok": False, "tail": f"{type(e).__name__}: {e}"})
    rec["project"] = used
    env = {**os.environ, "PYTHONPATH": str(target)}
    p = subprocess.run([python, "-c", VERIFY], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    rec["imports_from"] = p.stdout.strip() if p.returncode == 0 else None
    rec["verify_error"] = None if p.returncode == 0 else (p.stdout + p.stderr)[-1500:]
    probe = ("import importlib.util, json, sys; print(json.dumps({m: importlib.util.find_spec(m) is not None "
             "for m in sys.argv[1:]}))")
    q = subprocess.run([python, "-c", probe, *NEEDED_MODULES], capture_output=True, text=True, env=env, cwd="/",
                       timeout=120)
    rec["modules"] = json.loads(q.stdout) if q.returncode == 0 else {}
    rec["ok"] = used is not None and rec["imports_from"] is not None and rec["wheels_ok"] is not False
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    ap.add_argument("--target", type=Path, default=Path("/tmp/tunepp_site"))
    ap.add_argument("--record", type=Path, default=None)
    ap.add_argument("--mode", choices=("auto", "pip", "copy"), default="auto")
    args = ap.parse_args(argv)
    rec = install(args.wheels, args.target.resolve(), args.mode)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(rec, indent=2))
    missing = [m for m, ok in rec["modules"].items() if not ok]
    print(f"install: project by {rec['project']}, imports from {rec['imports_from']}, {len(rec['wheels'])} wheels, "
          f"{rec['seconds']} s" + (f"; missing modules: {', '.join(missing)}" if missing else ""), flush=True)
    print(f"PYTHONPATH={args.target.resolve()}")
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
