#!/usr/bin/env bash
# The GPU checks, as one prepared run for a device machine (an H200 image with torch+CUDA 13, plain onnxruntime,
# no network). Never run by CI. From the repo root on that machine:
#
#   bash benchmarks/device_check.sh                      # torch-on-CUDA checks only (~2 min)
#   ORT_GPU=1 bash benchmarks/device_check.sh            # onnxruntime's CUDA provider first (CUDA graphs included),
#                                                        # then training: needs .whl/ from benchmarks/device_wheels.sh
#   ORT_GPU=1 PARTS=ort bash benchmarks/device_check.sh  # only the onnxruntime part (~7 min)
#
# Each phase has its own time limit so the run ends inside one 10-minute device call and the summary is written
# whatever fails. Results (logs and tables) go to $OUT (the device tool brings that folder back), else ./device-out.
set -uo pipefail
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
PARTS=${PARTS:-ort train}
SECONDS_PER_POINT=${SECONDS_PER_POINT:-5}
export SECONDS_PER_POINT
log() { echo "== [$(date -u +%H:%M:%S), ${SECONDS}s] $*" | tee -a "$OUT/summary.txt"; }
has() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

log "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/summary.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/summary.txt"

if [ "${ORT_GPU:-0}" = 1 ] && has ort; then
  # onnxruntime-gpu finds CUDA 13 and cuDNN 9 in the image's nvidia-* pip packages (torch's), not on the loader path
  NV=$($PY -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for sp in site.getsitepackages()
       for p in glob.glob(os.path.join(sp, 'nvidia', '**', 'lib*.so*'), recursive=True)})))")
  export LD_LIBRARY_PATH=$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ! $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
       2>/dev/null; then
    read -r name sha < .whl/small/onnxruntime_gpu.name
    log "installing $name from .whl/parts (joined) and .whl/small into /tmp/site"
    cat .whl/parts/onnxruntime_gpu.whl.part* > "/tmp/$name"
    echo "$sha  /tmp/$name" | sha256sum -c - 2>&1 | tee -a "$OUT/summary.txt"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/small/*.whl "/tmp/$name" 2>&1 | tail -3
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" \
    | tee -a "$OUT/summary.txt"

  log "onnxruntime CUDA provider: service GPU tests (CUDA graphs included) and the CPU side of CUDA graphs"
  timeout 180 $PY -m pytest -q -p no:cacheprovider -rs tests/test_service_gpu.py tests/test_service_buckets.py 2>&1 \
    | tail -12 | tee -a "$OUT/summary.txt"
  log "parity on CUDA"
  timeout 60 $PY -m ntm_serve.export.parity models/copy --provider cuda 2>&1 | tail -20 | tee -a "$OUT/summary.txt"
  log "GPU benchmark: engine and CUDA-graph tables, service with and without --cuda-graph"
  timeout 330 $PY -m benchmarks --only gpu --out "$OUT" 2>&1 | tee "$OUT/gpu-bench.log" | grep -v "^20" \
    | tail -80 | tee -a "$OUT/summary.txt"
fi

if has train; then
  log "training on CUDA: parity with the CPU, checkpoints and resume across devices (tests/test_training_cuda.py)"
  timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_training_cuda.py 2>&1 | tail -5 | tee -a "$OUT/summary.txt"

  log "training throughput, copy task, sequences/s by batch size and device"
  timeout 120 $PY - <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt"
import os, time, torch
from ntm_serve.training.train import Run, TrainConfig, train_step, build_model, build_optimizer
from ntm_serve.training.tasks import get_task
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
            train_step(run, task, cfg, torch.device(device))
        seen, t0 = run.seen, time.perf_counter()
        while time.perf_counter() - t0 < float(os.environ.get("SECONDS_PER_POINT", "10")):
            train_step(run, task, cfg, torch.device(device))  # float(loss) syncs the GPU every step
        print(f"| {device} | {batch} | {(run.seen - seen) / (time.perf_counter() - t0):.0f} |")
PYEOF
fi
log "done"
