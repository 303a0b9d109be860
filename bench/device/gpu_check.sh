#!/usr/bin/env bash
# `make gpu-check`: the whole GPU acceptance run for ONE device call, under the image's own python3
# (no venv, no network). Installs the project from the working tree plus carried wheels (.whl, from
# `make device-wheels`), then runs `tunepp bench gpu`; everything it writes goes to $OUT (gpu.json,
# gpu.md, gpu.png, gpu.log, install.json: 5 files of the 8 that come back). The summary table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/tunepp_gpu_out}
SITE=${SITE:-/tmp/tunepp_site}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
"$PY" bench/device/install.py --wheels .whl --target "$SITE" --record "$OUT/install.json" || {
  echo "install failed: see $OUT/install.json"; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m tunepp_deploy bench gpu --out "$OUT" --install-record "$OUT/install.json" "$@" 2>&1 | tee "$OUT/gpu.log"
exit "${PIPESTATUS[0]}"
