#!/usr/bin/env bash
# Prepares .whl/ (git-ignored) for `ORT_GPU=1 bash benchmarks/device_check.sh` on a lent GPU machine, which has torch
# with CUDA 13 but plain onnxruntime and no network. Run HERE, from the repo root, with pip able to download.
#
#   .whl/small/  the serving wheels the device image lacks or has at other versions (grpcio and protobuf at the
#                versions the generated code was made with, health, reflection, redis, googleapis-common-protos),
#                and onnxruntime_gpu.name: the big wheel's file name and sha256
#   .whl/parts/  onnxruntime-gpu's wheel (~244 MiB), split into parts that each fit in one device call beside the
#                working tree (the tree travels with every call: 64 MiB in all, carried paths included)
#
# Then, while the machine stays warm (it is given back after 30 s idle), one call per part, each carrying only its
# part (carry [".whl/parts/onnxruntime_gpu.whl.partNN"], command `true`): ignored files stay there between calls.
# The last call carries .whl/small and runs the check. The script prints that plan with the part count.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl && mkdir -p .whl/small .whl/parts /tmp/ntm-ortgpu
PY=${PY:-python3}
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
$PY -m pip download -q --no-deps "${TARGET[@]}" -d .whl/small grpcio==1.85.1 grpcio-health-checking==1.85.1 \
  grpcio-reflection==1.85.1 protobuf==7.36.2 googleapis-common-protos==1.76.0 redis==8.1.0
$PY -m pip download -q --no-deps "${TARGET[@]}" -d /tmp/ntm-ortgpu onnxruntime-gpu==1.31.1
wheel=$(ls /tmp/ntm-ortgpu/onnxruntime_gpu-1.31.1-*.whl)
echo "$(basename "$wheel") $(sha256sum "$wheel" | cut -d' ' -f1)" > .whl/small/onnxruntime_gpu.name
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)  # bytes of the tracked tree: they travel every call
part=$(( 64 * 1024 * 1024 - tree - 2 * 1024 * 1024 ))  # 2 MiB spare for untracked files
if [ "$part" -lt $(( 4 * 1024 * 1024 )) ]; then
  echo "the tracked tree ($tree bytes) leaves under 4 MiB per call: no room to carry onnxruntime-gpu" >&2
  exit 1
fi
split -b "$part" -d -a 2 "$wheel" .whl/parts/onnxruntime_gpu.whl.part
small=$(du -cb .whl/small/* | tail -1 | cut -f1)
n=$(ls .whl/parts | wc -l)
echo "tree $((tree / 1048576)) MiB travels every call; onnxruntime-gpu in $n parts of $((part / 1048576)) MiB;"
echo "small wheels $((small / 1048576)) MiB. Device calls: $n carrying one part each (command: true), then"
echo "  carry [\".whl/small\"], command: ORT_GPU=1 bash benchmarks/device_check.sh"
if [ $(( tree + small )) -gt $(( 64 * 1024 * 1024 )) ]; then
  echo "WARNING: the tree and the small wheels together exceed 64 MiB: carry them in a call of their own" >&2
fi
