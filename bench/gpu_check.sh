#!/usr/bin/env bash
# GPU check: on a CUDA machine with no internet, measure in under 8 minutes every figure tunebook only
# estimates (real-size SDXL full fine-tune and LoRA steps with the A6000 and A100 template settings, SD 1.5 at
# 512², a training state's write time, upscaler, WD-tagger-shaped ViT on onnxruntime-gpu, LoRA extraction of a
# real-size pair, generation), each in its own process and time budget, into ONE JSON file under bench/results/,
# compared with the pre-flight's estimates. Details: bench/gpu_check.py.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (after setup.sh)
#   bash bench/gpu_check.sh --dry-run       # CPU smoke versions: proves it starts and writes valid JSON
#   bash bench/gpu_check.sh --only sdxl_full_a6000,state_save --no-calibrate
#
# Knob: PYTHON (default: the repo's .venv, else python3).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
exec "$PY" bench/gpu_check.py "$@"
