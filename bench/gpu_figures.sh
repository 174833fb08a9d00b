#!/usr/bin/env bash
# Every GPU figure of the prediction and scene issues in one call (a few minutes on an H100):
# training steps (samples/s, bf16, batch 32) with the GPU's utilisation sampled meanwhile,
# prediction tiles/s (1 and 10 members, fp32 and bf16) against the naive loop in the same run,
# the host pipeline's ceiling, and map throughput on a scene-like raster.
#
# On the device machine (its image has torch with CUDA, lightning, timm, pandas): put the other
# wheels (smp, kornia, rasterio, spyndex, ...) in .whl/ as /work/.library/device/README.md shows
# and carry it; they are installed into /tmp/site. QUICK=1 runs tiny sizes with the local
# environment (a CPU smoke test: PY=.venv/bin/python QUICK=1 bash bench/gpu_figures.sh).
#   bash bench/gpu_figures.sh            # figures and gpu_util.csv land in $OUT (or /tmp/gpu_figures)
set -u
if [ "${QUICK:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_figures}
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then
  TILES=6 MEMBERS="1 2" CONFIG=tiny BATCH=4 SIZE=400 TRAIN="--tiles 20 --batches 2 --repeat 1"
else
  TILES=512 MEMBERS="1 10" CONFIG=default BATCH=64 SIZE=4000 TRAIN="--tiles 200 --model"
fi
SMI=""
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 200 > "$OUT/gpu_util.csv" &
  SMI=$!
fi
mark() { echo "$(date +%s.%N) $1" >> "$OUT/phases.txt"; }
: > "$OUT/phases.txt"
mark train
$PY bench/train_throughput.py $TRAIN --json "$OUT/train_throughput.json" 2>&1 | grep -v Warning
mark predict
$PY bench/predict_speed.py --tiles $TILES --members $MEMBERS --precision fp32 bf16 \
  --batch-size $BATCH --config $CONFIG --naive --work /tmp/gpu_predict 2>&1 | tr '\r' '\n' | grep '^[{#]'
mark host_only
$PY bench/predict_speed.py --tiles $TILES --members 1 --precision bf16 --batch-size $BATCH \
  --config $CONFIG --host-only --work /tmp/gpu_predict 2>&1 | tr '\r' '\n' | grep '^[{#]'
mark map
$PY bench/map_speed.py --size $SIZE --configs $CONFIG --batch-size 32 --footprint-deg 12 2>&1 \
  | tr '\r' '\n' | grep '^[|a-z0-9]' | grep -v 'it/s\|win/s'
mark end
[ -n "$SMI" ] && kill "$SMI"
# mean GPU utilisation per phase (nvidia-smi timestamps are local time, like date)
[ -n "$SMI" ] && $PY - "$OUT" <<'PY'
import csv, datetime as dt, sys
from pathlib import Path
out = Path(sys.argv[1])
marks = [(float(t), name) for t, name in (l.split() for l in (out / "phases.txt").read_text().splitlines())]
rows = []
for r in csv.reader((out / "gpu_util.csv").open()):
    try:
        t = dt.datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
        rows.append((t, float(r[1]), float(r[2])))
    except (ValueError, IndexError):
        continue
for (t0, name), (t1, _) in zip(marks, marks[1:]):
    u = [g for t, g, _ in rows if t0 <= t < t1]
    m = [mem for t, _, mem in rows if t0 <= t < t1]
    if u:
        print(f"{name}: {t1 - t0:.0f} s, GPU busy {sum(u) / len(u):.0f} % mean, peak memory {max(m):.0f} MiB")
PY
exit 0
