"""numba-cuda kernels under the CUDA simulator, in a subprocess (the switch is read at import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_numba_cuda_simulator_matches_numba() -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    script = Path(__file__).with_name("cuda_sim_check.py")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "agrees" in proc.stdout
