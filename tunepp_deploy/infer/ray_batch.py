"""``tunepp infer --ray``: a folder's cases streamed to Ray actors, each holding one opened predictor.

Ray is the engine; nothing here schedules. Each actor (:class:`CaseWorker`) opens the predictor once,
when it starts, and then computes whole cases through the local pipeline:
:func:`tunepp_deploy.infer.case.run_paths` on a one-scan list, so locks, verified resume, atomic
outputs and failure isolation are the local loop's own code, not a copy. The driver hands case paths
to idle actors with :class:`ray.util.ActorPool` (one case in flight per actor, the next one as soon as
an actor is free) and merges the per-case outcomes into one :class:`~tunepp_deploy.infer.batch.BatchResult`,
which the CLI turns into the same lines, summary, triage page and exit code as a local run.

Why plain actors and ``ActorPool`` rather than Ray Data ``map_batches`` (docs/ray.md has the long form):

* the whole run must be refused **before any work** when the folder holds reports of another
  configuration. That needs the manifest of an *opened* predictor (backend, resolved S, seed, ...).
  With explicit actors the driver asks the actors that already hold the model (:meth:`CaseWorker.header`)
  and then decides; with ``map_batches`` the actors only exist inside the streaming executor, so the
  check would cost an extra model load elsewhere (the driver may have no GPU at all);
* one case is the unit of work, of retry and of failure; there are no tensors to move between
  operators, so Ray Data's blocks, Arrow conversion and backpressure buy nothing, and its retry of a
  task whose worker died would recompute a case that may kill every worker it lands on (out of memory);
* a dead worker must fail exactly the case it was computing. ``ActorPool`` drops a dead actor from its
  idle set (Ray 2.60, the version tested), the error names the actor, and the driver starts a
  replacement (at most :data:`REPLACEMENTS_PER_WORKER` per worker) so one poisonous case does not take a
  worker slot away for the rest of the folder.

Failure isolation adds one case the local loop does not have: a worker process that dies mid-case
(killed for memory, a segfault in a backend) cannot remove its own partial files. The driver then
takes the case's lock (free once the process is gone), removes its temporaries and, if no complete
report is there, the outputs it wrote, reports the case failed and goes on. On Ctrl-C / SIGTERM the
driver kills every actor and does the same for the cases in flight, so an interrupted Ray run leaves
what an interrupted local run leaves: finished cases, nothing half-written.

Paths travel as strings: on a multi-node cluster the input and output folders must be on a file system
every node mounts at the same path (the per-case locks are ``flock`` locks; NFS gives them only with
lock support).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepp_deploy.data.layout import case_name
from tunepp_deploy.errors import TuneppError
from tunepp_deploy.infer.batch import IN_PROGRESS, BatchResult, CaseCallback, refuse_other_runs, remove_stale_temps
from tunepp_deploy.infer.case import CaseOptions, output_paths
from tunepp_deploy.infer.lock import try_lock
from tunepp_deploy.infer.manifest import case_state
from tunepp_deploy.predictors.settings import RunOptions

#: The one-line error of ``--ray`` without Ray installed.
RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'tunepp-deploy[ray]'"
#: Workers started to replace dead ones, per requested worker, before the pool shrinks instead.
REPLACEMENTS_PER_WORKER = 2
#: Seconds the driver waits for a dead worker's case lock to become free before leaving the cleanup
#: of its partial files to the next run (which removes them under the lock anyway).
LOCK_WAIT_S = 10.0
#: Seconds between the driver's checks for a finished case (it handles signals between them).
POLL_S = 1.0


def import_ray() -> Any:
    """``ray``, or the one-line :data:`RAY_MISSING` error (Ray is an optional extra, imported only here)."""
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401 - ray core, present in every ray install
    except ImportError:
        raise TuneppError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """``--address``, ``--gpus-per-worker``, ``--workers`` (``None``: derived from the cluster, see
    :func:`plan_workers`)."""

    address: str | None = None
    gpus_per_worker: float | None = None
    workers: int | None = None


@dataclass(frozen=True)
class OpenSpec:
    """How every actor opens its predictor: the arguments of
    :func:`tunepp_deploy.predictors.open.open_predictor` (``device`` as the actor must use it)."""

    model: Path
    method: str
    backend: str
    device: str
    options: RunOptions
    open_kw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseEvent:
    """One case's outcome as an actor reports it (status ``done``, ``skipped`` or ``failed``)."""

    name: str
    status: str
    message: str
    busy: bool = False
    report: str | None = None


@dataclass(frozen=True)
class WorkerPlan:
    """Resources of each actor and how many to start."""

    workers: int
    cpus: float
    gpus: float
    device: str


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0][:300] if lines else ""
    return text if isinstance(e, TuneppError) and text else f"{type(e).__name__}: {text}"


class CaseWorker:
    """The state of one Ray actor: an opened predictor and the options of every case it computes.

    A predictor that cannot be opened is not raised from ``__init__`` (Ray would report a dead actor with
    a traceback); the one-line reason is kept and returned by :meth:`header`, which the driver turns into
    the run's one-line error before any case is given out.
    """

    def __init__(self, spec: OpenSpec, out_dir: str, case_opts: CaseOptions) -> None:
        from tunepp_deploy.predictors.open import open_predictor

        self.out_dir, self.case_opts = Path(out_dir), case_opts
        self.predictor: Any = None
        self.error: str | None = None
        try:
            self.predictor = open_predictor(spec.model, spec.method, spec.backend, spec.device, spec.options,
                                            **spec.open_kw)
        except Exception as e:  # reported by header(): one line for the whole run
            self.error = _first_line(e)

    def header(self) -> dict[str, Any]:
        """``{"error"}`` or the run manifest, the predictor's one-line description and its map names."""
        if self.error is not None:
            return {"error": self.error}
        from tunepp_deploy.infer.manifest import run_manifest

        p, o = self.predictor, self.case_opts
        d = p.describe()
        extra = "".join(f", {k}={d[k]}" for k in ("samples", "seed") if k in d)
        return {"error": None, "manifest": run_manifest(p, o.model, o.flag_threshold),
                "line": f"{p.describe_runner()} ({p.method}{extra}), window={p.window}",
                "map_names": list(p.map_names)}

    def run(self, image: str) -> tuple[str, list[CaseEvent]]:
        """Case ``image`` through the local pipeline -> (this actor's id, the case's events)."""
        import ray

        from tunepp_deploy.infer.case import run_paths

        me = ray.get_runtime_context().get_actor_id() or ""
        name = case_name(Path(image))
        if self.error is not None:
            return me, [CaseEvent(name, "failed", self.error)]
        events: list[tuple[str, str, str]] = []
        try:
            res = run_paths([Path(image)], self.out_dir, self.predictor, self.case_opts,
                            lambda n, s, m: events.append((n, s, m)))
        except TuneppError as e:  # checks run_batch makes per call (folder, configuration): this case only
            return me, [CaseEvent(name, "failed", _first_line(e))]
        return me, [CaseEvent(n, s, m, busy=n in res.busy, report=str(res.reports[n]) if n in res.reports else None)
                    for n, s, m in events]


def plan_workers(resources: dict[str, float], opts: RayOptions, device: str, threads: int | None,
                 cases: int) -> WorkerPlan:
    """Resources per actor and the number of actors, checked against the cluster (one-line errors).

    Each actor reserves ``threads`` CPUs (default 1; Ray also sets its ``OMP_NUM_THREADS`` to that) and
    ``gpus_per_worker`` GPUs. Unset GPUs: 1 if the cluster has a GPU and ``device`` is not ``cpu``, else 0.
    Unset workers: as many as the cluster's CPUs (or GPUs) hold, at most one per case. A worker that
    reserves no GPU is given ``device cpu`` (Ray hides the GPUs from it).
    """
    cpus = float(threads or 1)
    have_cpu, have_gpu = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    gpus = opts.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if device != "cpu" and have_gpu >= 1 else 0.0
    if gpus < 0:
        raise TuneppError(f"--gpus-per-worker {gpus:g}: must be 0 or more")
    if gpus > 0 and device == "cpu":
        raise TuneppError(f"--gpus-per-worker {gpus:g} reserves GPUs that --device cpu would not use")
    if gpus == 0 and device.startswith("cuda"):
        raise TuneppError(f"--device {device} with --ray needs --gpus-per-worker > 0 "
                          "(Ray hides the GPUs from workers that reserve none)")
    fits = int(have_cpu // cpus) if cpus > 0 else cases
    if gpus > 0:
        fits = min(fits, int(have_gpu // gpus + 1e-9))
    workers = opts.workers
    if workers is not None and workers < 1:
        raise TuneppError(f"--workers {workers}: must be at least 1")
    if workers is None:
        workers = max(1, min(fits, cases))
    if workers > fits:
        raise TuneppError(f"{workers} Ray worker(s) of {cpus:g} CPU(s) and {gpus:g} GPU(s) do not fit the cluster "
                          f"({have_cpu:g} CPUs, {have_gpu:g} GPUs); lower --workers, --threads or --gpus-per-worker")
    return WorkerPlan(workers, cpus, gpus, ("cpu" if device == "auto" else device) if gpus == 0 else device)


def discard_partial(out_dir: Path, name: str, files: dict[str, Path], manifest: dict[str, Any],
                    wait_s: float = LOCK_WAIT_S) -> bool:
    """Remove what a dead worker left of case ``name``: its temporaries, and its outputs unless a complete
    report of this run (or a report of another configuration, which is not this run's to delete) is there.

    Done under the case's lock, which the kernel frees when the worker's process is gone; returns whether
    the lock was taken within ``wait_s`` seconds (if not, the next run cleans up under the lock).
    """
    end = time.monotonic() + wait_s
    while (lock := try_lock(out_dir, name)) is None:
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    with lock:
        remove_stale_temps(files)
        if case_state(files["report"], manifest, files).status == "redo":
            for p in (files["report"], *(p for k, p in files.items() if k != "report")):
                if p.is_file() or p.is_symlink():
                    p.unlink(missing_ok=True)
    return True


def _connect(ray: Any, address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (``None``: start a local one); returns whether this call did
    (and so must shut it down). An already initialised Ray (embedded use, tests) is used as it is."""
    if ray.is_initialized():
        return False
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=True, log_to_driver=True)
    except Exception as e:  # ConnectionError, ValueError for a bad address, RuntimeError from the raylet
        where = f"--address {address}" if address else "a local Ray instance"
        raise TuneppError(f"{where}: cannot start or join Ray ({_first_line(e)})") from None
    finally:
        if main and sigterm is not None:  # ray.init installs sys.exit on SIGTERM: keep the caller's handler
            signal.signal(signal.SIGTERM, sigterm)  # (the CLI's: SIGTERM = Ctrl-C, cleanup, exit 143)
    return True


def run_ray(
    images: Sequence[Path],
    out_dir: Path,
    spec: OpenSpec,
    case_opts: CaseOptions,
    ray_opts: RayOptions,
    all_names: Sequence[str] | None = None,
    on_case: CaseCallback | None = None,
    on_start: Callable[[str, WorkerPlan], None] | None = None,
) -> BatchResult:
    """Compute ``images`` (a folder's scans, or one part's) on Ray actors (module docstring).

    ``all_names``: every case name of the folder (reports of another configuration refuse the whole run,
    as locally); ``on_case`` as for :func:`~tunepp_deploy.infer.batch.run_batch`; ``on_start(line, plan)``
    once every actor holds its predictor, before the first case.
    """
    ray = import_ray()
    from ray.exceptions import ActorDiedError, RayActorError
    from ray.util import ActorPool

    started = _connect(ray, ray_opts.address)
    actors: list[Any] = []
    inflight: dict[str, Path] = {}
    res = BatchResult()
    map_names: list[str] = []
    manifest: dict[str, Any] = {}

    def files_of(name: str) -> dict[str, Path]:
        return output_paths(out_dir, name, tuple(map_names), case_opts.write_probs)

    try:
        plan = plan_workers(ray.cluster_resources(), ray_opts, spec.device, spec.open_kw.get("threads"), len(images))
        remote = ray.remote(CaseWorker).options(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=0,
                                                max_task_retries=0)
        worker_spec = OpenSpec(spec.model, spec.method, spec.backend, plan.device, spec.options, spec.open_kw)

        def start() -> Any:
            actor = remote.remote(worker_spec, str(out_dir), case_opts)
            actors.append(actor)
            return actor

        for _ in range(plan.workers):
            start()
        headers = ray.get([a.header.remote() for a in actors])  # every actor has loaded its model
        bad = next((h["error"] for h in headers if h["error"]), None)
        if bad:
            raise TuneppError(bad)
        manifest, map_names = headers[0]["manifest"], headers[0]["map_names"]
        if not case_opts.overwrite:
            refuse_other_runs(list(all_names or [case_name(p) for p in images]), out_dir, manifest)
        if on_start:
            on_start(headers[0]["line"], plan)

        def tell(ev: CaseEvent) -> None:
            if ev.status == "done":
                res.done.append(ev.name)
                if ev.report:
                    res.reports[ev.name] = Path(ev.report)
            elif ev.status == "skipped":
                res.skipped.append(ev.name)
                if ev.busy or ev.message.startswith(IN_PROGRESS):
                    res.busy.append(ev.name)
            else:
                res.failed.append((ev.name, ev.message))
            if on_case:
                on_case(ev.name, ev.status, ev.message)

        pool = ActorPool(list(actors))
        queue = deque(Path(p) for p in images)
        spare = REPLACEMENTS_PER_WORKER * plan.workers

        def send(actor: Any, image: Path) -> Any:
            inflight[actor._actor_id.hex()] = image  # the id a death error names (RayActorError.actor_id)
            return actor.run.remote(str(image))

        def give_out() -> None:
            while queue and pool.has_free():
                pool.submit(send, queue.popleft())

        give_out()
        while pool.has_next():
            try:  # a short timeout keeps the driver responsive to Ctrl-C / SIGTERM while a long case runs
                who, events = pool.get_next_unordered(timeout=POLL_S)
            except TimeoutError:
                continue
            except RayActorError as e:  # the worker died (or became unreachable) while computing one case
                image = inflight.pop(str(e.actor_id), None)
                if image is None:  # not attributable to a case: stop cleanly (finished cases are kept)
                    raise TuneppError(f"a Ray worker failed outside a known case ({_first_line(e)}); "
                                      "rerun to resume") from None
                name = case_name(image)
                kept = discard_partial(out_dir, name, files_of(name), manifest)
                left = "its partial outputs were removed" if kept else "rerun to clean up"
                tell(CaseEvent(name, "failed", f"the Ray worker computing it died (e.g. killed for memory); {left}"))
                if isinstance(e, ActorDiedError) and spare > 0:
                    spare -= 1
                    pool.push(start())
                elif not pool.has_free() and not pool.has_next():
                    for im in queue:
                        tell(CaseEvent(case_name(im), "failed", "no Ray worker left (all died)"))
                    queue.clear()
            else:
                inflight.pop(who, None)
                for ev in events:
                    tell(ev)
            give_out()
    except BaseException:
        for a in actors:  # interrupted or failed: stop every worker now, then clean up the cases in flight
            ray.kill(a)
        for image in inflight.values():
            name = case_name(image)
            discard_partial(out_dir, name, files_of(name), manifest)
        if started:
            ray.shutdown()
        raise
    for a in actors:
        ray.kill(a)
    if started:
        ray.shutdown()
    return res


__all__ = ["RAY_MISSING", "CaseEvent", "CaseWorker", "OpenSpec", "RayOptions", "WorkerPlan", "discard_partial",
           "import_ray", "plan_workers", "run_ray"]
