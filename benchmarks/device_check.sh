#!/usr/bin/env bash
# The GPU checks, as one prepared run for a device machine (an H200 image with torch+CUDA, plain onnxruntime,
# no network). Never run by CI. From the repo root on that machine:
#
#   bash benchmarks/device_check.sh            # torch-on-CUDA checks only (~3 min)
#   ORT_GPU=1 bash benchmarks/device_check.sh  # plus onnxruntime's CUDA provider: needs the onnxruntime-gpu wheel
#                                              # in .whl/ (see docs/performance.md, "GPU checks"), carried in parts
#
# Results (logs and tables) go to $OUT (the device tool brings that folder back), else to ./device-out.
set -uo pipefail
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/summary.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/summary.txt"

if [ "${ORT_GPU:-0}" = 1 ]; then
  log "installing onnxruntime-gpu from .whl/ (parts joined)"
  cat .whl/onnxruntime_gpu*.part* > /tmp/onnxruntime_gpu.whl 2>/dev/null || true
  $PY -m pip uninstall -y -q onnxruntime
  $PY -m pip install -q --no-index --no-deps .whl/*.whl /tmp/onnxruntime_gpu.whl 2>&1 | tail -3
fi

log "training on CUDA: parity with the CPU, checkpoints and resume across devices (tests/test_training_cuda.py)"
$PY -m pytest -q -p no:cacheprovider tests/test_training_cuda.py 2>&1 | tail -5 | tee -a "$OUT/summary.txt"

log "training throughput, copy task, sequences/s by batch size and device"
$PY - <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import os, time, torch
from training.train import Run, TrainConfig, _train_step, build_model, build_optimizer
from training.tasks import get_task
task = get_task("copy")
print("| device | batch | sequences/s |")
print("|---|---:|---:|")
for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
    torch.set_num_threads(1)
    for batch in (16, 64, 256):
        cfg = TrainConfig(task="copy", out="/tmp/x", batch_size=batch)  # the trainer's own step, clip included
        model = build_model(cfg, task).to(device)
        run = Run(model, build_optimizer(cfg, model), torch.Generator().manual_seed(0))
        for _ in range(3):
            _train_step(run, task, cfg, torch.device(device))
        seen, t0 = run.seen, time.perf_counter()
        while time.perf_counter() - t0 < float(os.environ.get("SECONDS_PER_POINT", "10")):
            _train_step(run, task, cfg, torch.device(device))  # float(loss) syncs the GPU every step
        print(f"| {device} | {batch} | {(run.seen - seen) / (time.perf_counter() - t0):.0f} |")
PYEOF

if [ "${ORT_GPU:-0}" = 1 ]; then
  log "onnxruntime CUDA provider: service GPU tests, parity on CUDA, GPU benchmark tables"
  $PY -m pytest -q -p no:cacheprovider tests/test_service_gpu.py 2>&1 | tail -5 | tee -a "$OUT/summary.txt"
  $PY -m export.parity models/copy --provider cuda 2>&1 | tail -20 | tee -a "$OUT/summary.txt"
  $PY -m benchmarks --only gpu --out "$OUT" 2>&1 | tail -60 | tee -a "$OUT/summary.txt"
fi
log "done"
