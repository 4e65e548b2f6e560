#!/usr/bin/env bash
# The one script to run on a lent GPU machine (the `device` tool gives ~15 minutes in all):
#   CUDA parity of the replica (≤ 1e-4, float32 and half), faces/s at batch 256, and a short fine-tune on CUDA
#   (AMP) against the same run on CPU. Results land in $OUT (or /tmp/device-check).
# Usage, from the repository root on the device machine:  bash benchmarks/device_check.sh
set -uo pipefail
out="${OUT:-/tmp/device-check}"
mkdir -p "$out"
python -m pip install -q -e . 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -m pytest -q tests/test_encoders.py -k cuda 2>&1 | tail -3 | tee "$out/parity.txt"
python benchmarks/bench_encoder.py --device cuda 2>&1 | tee "$out/encoder_cuda.txt"
faces="${DLIBPLUS_FACES:-../shared/data/faces}"
for device in cuda cpu; do
    start=$(date +%s)
    dlibplus finetune "$faces/kpop_idols15" --face-box whole --epochs 5 --device "$device" -o "$out/ft-$device" \
        > "$out/finetune_$device.txt" 2>&1
    rc=$?
    echo "finetune 5 epochs on $device: $(( $(date +%s) - start )) s, exit $rc" | tee -a "$out/summary.txt"
    tail -8 "$out/finetune_$device.txt" | tee -a "$out/summary.txt"
done
