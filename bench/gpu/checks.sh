#!/usr/bin/env bash
# On a GPU machine lent through the device tool, in one call (docs/gpu.md). First, here: bash bench/gpu/prepare.sh
#   device run: command="bash bench/gpu/checks.sh", carry=[".gpu", ".whl"], timeout_s=600
# Every step writes into $OUT as it ends, so a step cut short leaves the others' files:
#   gpu.txt             the device, driver, torch and CUDA versions
#   gpu_tests.txt       the GPU tests: CUDA graphs against eager (layers, compaction, the halting loop),
#                       training and resuming on the GPU
#   metrics-bl1.json, metrics-tinv.json   BL1 and Transformer⁻¹ trained on the GPU (MiniLM-L6 from float16;
#                       4,096 training and 2,000 test rows, the spec's test size, so that the call fits)
#   bench_paths-graphs.json   dht bench-paths --graphs: eager, buckets and CUDA graphs, switching μs per layer
#   ddp_scaling-gpu.json      bench/ddp_scaling.py under torchrun on the GPUs the machine has (NCCL from 2)
#   log.txt             everything the steps printed
# DEVICE=cpu BACKBONE=tiny MAX_TRAIN=64 MAX_TEST=64 runs the same steps on a CPU (no graphs, no wheels): a
# check of this script (tests/bench/test_gpu_checks.py), not of the GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-checks}
DEVICE=${DEVICE:-cuda}
BACKBONE=${BACKBONE:-.gpu/minilm16}
MAX_TRAIN=${MAX_TRAIN:-4096}
MAX_TEST=${MAX_TEST:-2000}
PY=${PY:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PWD:/tmp/site" || exit 1
fi
runs=$(mktemp -d)
limit="--max-train $MAX_TRAIN --max-test $MAX_TEST"
step() { echo "== $(date +%T) $*"; }
# The step limits add up to 540 s, inside the device's 600 s a call.

step "versions"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu',
torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  # Transformer⁻¹'s training needs torchrl's GAE; the carried wheels were built for a newer torch
  "$PY" -c "import torchrl, pydantic; from torchrl.objectives.value.functional import generalized_advantage_estimate
print('torchrl', torchrl.__version__, 'pydantic', pydantic.__version__)" 2>&1 | tail -1; } > "$OUT/gpu.txt"
cat "$OUT/gpu.txt"

step "GPU tests"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/model/test_graphs.py tests/training/test_device.py \
  "tests/methods/test_tinv.py::test_graph_replay_halts_like_the_eager_loop" > "$OUT/gpu_tests.txt" 2>&1
tail -5 "$OUT/gpu_tests.txt"

step "train BL1 and Transformer⁻¹"
for method in full tinv; do
  if [ $method = tinv ]; then options="--predictor logistic" seconds=150; else options="" seconds=45; fi
  timeout $seconds "$PY" -m dht train --method $method $options --backbone "$BACKBONE" --device "$DEVICE" $limit \
    --output "$runs/$method" --quiet && cp "$runs/$method/metrics.json" "$OUT/metrics-${method/full/bl1}.json"
done

step "bench-paths"
graphs=$([ "$DEVICE" = cuda ] && echo "--graphs")
timeout 150 "$PY" -m dht bench-paths "$runs/tinv" --reference "$runs/full" $graphs --device "$DEVICE" \
  --output "$OUT/bench_paths-graphs.json"

step "ddp scaling"
gpus=$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")
ranks=$(for r in 1 2 4 8; do [ $r -le "$gpus" ] && echo -n "$r "; done)
timeout 75 "$PY" bench/ddp_scaling.py --device "$DEVICE" --ranks $ranks --backbone "$BACKBONE" \
  --max-train "$MAX_TRAIN" --output "$OUT/ddp_scaling-gpu.json"
step "done"
