"""What CPU the benchmark ran on, read from the machine (``/proc/cpuinfo``), never typed in by hand.

Why: the published tables once named the machine "AMD EPYC" while ``/proc/cpuinfo`` said Intel Xeon
with AVX-512, VNNI, bf16 and AMX — and those flags decide which kernels oneDNN / OpenVINO pick (and
that OpenVINO's default CPU precision is bf16), so a figure without them cannot be compared. The
parser is a pure function of the file's text so it can be tested against a fixture.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Flags that change which kernels the runtimes pick (reported when present, in this order).
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                     "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFacts:
    """CPU model, vector/matrix flags of interest and core counts."""

    model_name: str
    flags: tuple[str, ...]
    logical_cpus: int
    physical_cores: int | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d

    def summary(self) -> str:
        """One line for bench.md: model, cores and the flags that matter."""
        cores = f"{self.physical_cores} cores / " if self.physical_cores else ""
        return f"{self.model_name} ({cores}{self.logical_cpus} logical CPUs; {' '.join(self.flags) or 'no AVX flags'})"


def parse_cpuinfo(text: str) -> CpuFacts:
    """Parse ``/proc/cpuinfo`` text (x86 layout: blank-line separated ``key : value`` blocks per CPU)."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    if not blocks:
        raise ValueError("empty cpuinfo text")
    model, flags = "unknown", set()
    cores: set[tuple[str, str]] = set()
    logical = 0
    for block in blocks:
        kv: dict[str, str] = {}
        for line in block.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                kv[k.strip()] = v.strip()
        if "processor" not in kv:
            continue
        logical += 1
        model = kv.get("model name", model)
        flags |= set(kv.get("flags", "").split())
        if "physical id" in kv and "core id" in kv:
            cores.add((kv["physical id"], kv["core id"]))
    ordered = tuple(f for f in FLAGS_OF_INTEREST if f in flags)
    return CpuFacts(model, ordered, logical, len(cores) or None)


def read_cpu_facts(path: Path = CPUINFO) -> CpuFacts:
    """This machine's facts; where ``/proc/cpuinfo`` is missing (macOS, Windows) the model is unknown."""
    try:
        return parse_cpuinfo(path.read_text())
    except (OSError, ValueError):
        return CpuFacts("unknown (no /proc/cpuinfo)", (), os.cpu_count() or 1, None)


__all__ = ["FLAGS_OF_INTEREST", "CpuFacts", "parse_cpuinfo", "read_cpu_facts"]
