"""``tunepp infer --ray``: a folder on Ray actors gives the local run's outputs (hashes of the NIfTI data
arrays, affines), isolates a corrupt scan and a worker that dies mid-case, resumes, refuses another
configuration before any work, and writes the same triage page; the flags' one-line errors; the worker
plan against hand-counted clusters. Skipped (with the reason) where Ray is not installed, except the
tests that need no Ray.

Cost: one local Ray instance (``num_cpus=2``) for the module, 4 tiny phantom cases computed once
locally and ~4 times on Ray; about a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from batch_tools import MAPS, assert_one_line_error, infer, leftovers, make_model, partial_cases, stderr_of, write_scans

from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.ray_batch import RAY_MISSING, RayOptions, plan_workers

GOOD = ["a1", "b2", "c3"]
CRASH = "crash9"  # the Ray worker computing it dies right after writing its second output (once)


def _worker_setup() -> None:
    """Every Ray worker of this module's cluster: oneDNN off (as in the local run, see ``no_onednn``), and
    while a file ``crash-once`` is next to the output folder, the worker writing case ``crash9``'s second
    NIfTI removes it and dies (``os._exit``: no cleanup of its own, like a process killed for memory); the
    worker writing case ``hang7``'s first NIfTI then sleeps (a run stopped mid-case)."""
    import os
    import time
    from pathlib import Path

    import torch

    import tunepp_deploy.infer.case as case

    torch.backends.mkldnn.enabled = False
    real = case.save_volume

    def save_then_maybe_die(*args, **kw):  # save_volume's own arguments, passed on
        path = real(*args, **kw)
        if Path(path).name == "hang7_seg.nii.gz":  # mid-case, one output written: until the run is stopped
            time.sleep(300)
        once = Path(path).parent.parent / "crash-once"
        if Path(path).name == "crash9_aleatoric.nii.gz" and once.exists():
            once.unlink()
            os._exit(1)
        return path

    case.save_volume = save_then_maybe_die


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tunepp-deploy[ray]')")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": _worker_setup})
    print(f"\nray.init(num_cpus=2): {time.perf_counter() - t0:.1f} s")
    yield ray
    ray.shutdown()


@pytest.fixture
def no_onednn():
    """oneDNN convolutions round differently depending on what the process computed before (tests/infer/
    test_shard.py); a Ray worker's history differs from the local run's, so byte identity needs it off."""
    import torch

    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = was


def _data_hashes(out: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each output's data array (dtype, shape, bytes) and of its affine (not of the gzip file,
    whose header has a time stamp)."""
    hashes = {}
    for n in names:
        for m in MAPS:
            img = nib.load(str(out / f"{n}_{m}.nii.gz"))
            arr = np.asarray(img.dataobj)
            h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
            hashes[f"{n}_{m}"] = h.hexdigest()
            affine = np.ascontiguousarray(img.affine, np.float64)
            hashes[f"{n}_{m}_affine"] = hashlib.sha256(affine.tobytes()).hexdigest()
    return hashes


def _case_lines(text: str, status: str) -> dict[str, str]:
    """``{name: message}`` of the per-case lines ``STATUS NAME: MESSAGE``."""
    out = {}
    for line in text.splitlines():
        if line.startswith(f"{status} "):
            name, _, msg = line[len(status) + 1:].partition(": ")
            out[name] = msg
    return out


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x1f\x8b not really a gzip NIfTI" * 10)
    return path


@pytest.mark.usefixtures("no_onednn")
def test_ray_run_equals_local_run_isolates_failures_resumes(ray_cluster, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    inp = tmp_path / "in"
    write_scans(inp, [*GOOD, CRASH])
    _corrupt(inp / "d4.nii.gz")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    everything = [*GOOD, CRASH]

    t0 = time.perf_counter()
    res = infer(inp, local, model)
    t_local = time.perf_counter() - t0
    assert res.exit_code == 1, res.output
    local_failed = _case_lines(stderr_of(res), "failed")
    assert list(local_failed) == ["d4"]
    (tmp_path / "crash-once").touch()  # the first Ray worker to write crash9's second map dies
    t0 = time.perf_counter()
    res = infer(inp, on_ray, model, "--ray", "--workers", "2")
    t_ray = time.perf_counter() - t0
    err = stderr_of(res)
    assert res.exit_code == 1, err
    assert "on Ray: 2 worker(s), each 1 CPU(s), 0 GPU(s)" in err
    assert "3 done, 0 skipped, 2 failed" in err, err
    # the corrupt scan fails alone, with the local run's message; the dead worker fails only its case,
    # whose partial outputs are removed; its replacement and the other worker compute the rest
    failed = _case_lines(err, "failed")
    assert sorted(failed) == [CRASH, "d4"] and failed["d4"] == local_failed["d4"]
    assert "Ray worker computing it died" in failed[CRASH] and "partial outputs were removed" in failed[CRASH]
    assert not (tmp_path / "crash-once").exists()
    assert sorted(_case_lines(err, "done")) == GOOD
    hashes_local, hashes_ray = _data_hashes(local, GOOD), _data_hashes(on_ray, GOOD)
    same = sum(hashes_local[k] == hashes_ray[k] for k in hashes_local)
    print(f"\nlocal {t_local:.1f} s (5 cases, 1 thread), Ray {t_ray:.1f} s (2 workers x 1 thread, a worker "
          f"killed and replaced); {same}/{len(hashes_local)} data/affine hashes equal")
    assert hashes_ray == hashes_local
    for n in GOOD:  # outputs keep the input's affine
        seg, scan = nib.load(str(on_ray / f"{n}_seg.nii.gz")), nib.load(str(inp / f"{n}.nii.gz"))
        assert np.array_equal(seg.affine, scan.affine)
    assert not list(on_ray.glob("d4_*")) and not list(on_ray.glob(f"{CRASH}_*"))
    assert leftovers(on_ray) == [] and partial_cases(on_ray, [*everything, "d4"]) == []
    # the batch report lines and the triage page as in the local run (less the case whose worker died)
    assert (on_ray / "index.html").read_text().count('<tr class="case"') == len(GOOD)
    assert (local / "index.html").read_text().count('<tr class="case"') == len(everything)
    assert sorted(p.name for p in on_ray.iterdir()) == sorted(p.name for p in local.iterdir()
                                                               if not p.name.startswith(CRASH))

    # rerun (one worker): completed cases are verified and skipped; a deleted map's case and the case whose
    # worker died are redone, to the local run's bytes; the corrupt scan fails again
    (on_ray / "b2_total.nii.gz").unlink()
    res = infer(inp, on_ray, model, "--ray", "--workers", "1")
    err = stderr_of(res)
    assert res.exit_code == 1 and "2 done, 2 skipped, 1 failed" in err, err
    assert sorted(_case_lines(err, "done")) == ["b2", CRASH]
    assert _data_hashes(on_ray, everything) == _data_hashes(local, everything)
    assert (on_ray / "index.html").read_text().count('<tr class="case"') == len(everything)
    # reports of another configuration refuse the whole run before any case, in one line
    res = infer(inp, on_ray, model, "--ray", "--workers", "1", "--seed", "1")
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res), "another configuration", "seed 0 -> 1", "--overwrite")


def test_sigterm_stops_a_ray_run_like_a_local_one(ray_cluster, tmp_path: Path) -> None:
    """SIGTERM while a worker is mid-case: exit 143 with the local run's line, the finished case kept, the
    stopped one leaves no output, temporary or lock (the worker is killed, the driver cleans up under the
    case's lock)."""
    model = make_model(tmp_path / "model")
    inp, out = tmp_path / "in", tmp_path / "out"
    write_scans(inp, ["a1", "hang7"])
    partial, seen = out / "hang7_seg.nii.gz", []

    def stop_when_partial() -> None:
        end = time.monotonic() + 240
        while time.monotonic() < end and not partial.exists():
            time.sleep(0.2)
        seen.append(partial.exists())
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=stop_when_partial, daemon=True)
    killer.start()
    res = infer(inp, out, model, "--ray", "--workers", "1")
    killer.join()
    err = stderr_of(res)
    assert seen == [True], "the worker never reached the middle of case hang7"
    assert res.exit_code == 143, err
    assert "error: SIGTERM: stopped" in err
    assert (out / "a1_report.json").is_file()
    assert not list(out.glob("hang7*")) and leftovers(out) == [], sorted(p.name for p in out.iterdir())


def test_without_ray_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    write_scans(tmp_path / "in", ["a"])
    res = infer(tmp_path / "in", tmp_path / "out", tmp_path / "model.pt", "--ray")
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res), "pip install 'tunepp-deploy[ray]'")
    assert RAY_MISSING in stderr_of(res)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--workers", "2"], "--workers only apply with --ray"),
    (["--address", "auto", "--gpus-per-worker", "1"], "--address, --gpus-per-worker only apply with --ray"),
])
def test_ray_flags_without_ray(tmp_path: Path, args: list[str], needle: str) -> None:
    write_scans(tmp_path / "in", ["a"])
    res = infer(tmp_path / "in", tmp_path / "out", tmp_path / "model.pt", *args)
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res), needle)


def test_single_scan_with_ray_is_refused(tmp_path: Path) -> None:
    scan = write_scans(tmp_path / "in", ["a"])[0]
    res = infer(scan, tmp_path / "out", tmp_path / "model.pt", "--ray")
    assert res.exit_code == 2
    assert_one_line_error(stderr_of(res), "--ray runs a folder of scans")


@pytest.mark.parametrize(("resources", "opts", "device", "threads", "cases", "want"), [
    ({"CPU": 2.0}, RayOptions(), "auto", None, 4, (2, 1.0, 0.0, "cpu")),  # 2 CPUs / 1 thread
    ({"CPU": 2.0}, RayOptions(), "auto", None, 1, (1, 1.0, 0.0, "cpu")),  # no more workers than cases
    ({"CPU": 16.0}, RayOptions(), "cpu", 4, 9, (4, 4.0, 0.0, "cpu")),  # 16 // 4
    ({"CPU": 16.0, "GPU": 3.0}, RayOptions(), "auto", None, 9, (3, 1.0, 1.0, "auto")),  # one GPU each
    ({"CPU": 16.0, "GPU": 3.0}, RayOptions(gpus_per_worker=0.5), "cuda", 2, 20, (6, 2.0, 0.5, "cuda")),
    ({"CPU": 8.0, "GPU": 4.0}, RayOptions(gpus_per_worker=0.5), "auto", 2, 20, (4, 2.0, 0.5, "auto")),  # CPUs bind
    ({"CPU": 16.0, "GPU": 2.0}, RayOptions(gpus_per_worker=0, workers=3), "auto", None, 5, (3, 1.0, 0.0, "cpu")),
])
def test_worker_plan(resources, opts, device, threads, cases, want) -> None:
    p = plan_workers(resources, opts, device, threads, cases)
    assert (p.workers, p.cpus, p.gpus, p.device) == want


@pytest.mark.parametrize(("resources", "opts", "device", "needle"), [
    ({"CPU": 2.0}, RayOptions(workers=3), "auto", "3 Ray worker(s) of 1 CPU(s) and 0 GPU(s) do not fit"),
    ({"CPU": 8.0, "GPU": 1.0}, RayOptions(workers=2, gpus_per_worker=1), "auto", "(8 CPUs, 1 GPUs)"),
    ({"CPU": 8.0, "GPU": 1.0}, RayOptions(gpus_per_worker=1), "cpu", "that --device cpu would not use"),
    ({"CPU": 8.0}, RayOptions(), "cuda:0", "--device cuda:0 with --ray needs --gpus-per-worker > 0"),
    ({"CPU": 0.0}, RayOptions(), "auto", "do not fit the cluster (0 CPUs"),
])
def test_worker_plan_errors(resources, opts, device, needle) -> None:
    with pytest.raises(TuneppError) as e:
        plan_workers(resources, opts, device, None, 4)
    assert needle in str(e.value)
