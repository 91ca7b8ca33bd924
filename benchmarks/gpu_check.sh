#!/usr/bin/env bash
# GPU check: kernels against the PyTorch reference on CUDA, then the GPU benchmarks.
# Under 8 minutes on one H100/H200: the steps' limits add up to 450 s. Results (JSON, logs) go to
# $OUT (default benchmarks/out/gpu).
#
# For a GPU host with torch, triton and transformers but no network: the other wheels travel
# in .whl/ (made on a networked machine by `make gpu-wheels`; copy it with the checkout) and
# are installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD/.gpu-src${PYTHONPATH:+:$PYTHONPATH}"
fi
# The project itself, importable as smash.* without installing (mirrors pyproject's mapping).
mkdir -p .gpu-src/smash
for pkg in store precompute kernels train; do ln -sfn "$PWD/$pkg" ".gpu-src/smash/$pkg"; done
export PYTHONPATH="$PWD/.gpu-src${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

status=0
step() {  # step NAME TIMEOUT_S CMD...: run one check, keep its log, remember failures
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "it/s\]" | tail -40
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "!!! $name failed (exit $rc)"; status=1; }
}
step check_kernels   80 python3 benchmarks/check_kernels_cuda.py --out "$OUT"
# the same at T5-small's LM head (vocab 32,128, hidden 512; paper 4.7); its time is not yet
# measured on a GPU
step check_kernels_t5 45 python3 benchmarks/check_kernels_cuda.py --student t5-small --out "$OUT"
step bench_kernel     75 python3 benchmarks/bench_kernel.py --device cuda --out "$OUT"
step bench_teacher    85 python3 benchmarks/bench_teacher_pass.py --device cuda \
  --dtype fp16 --examples 40960 --shard-size 10240 \
  --token-budget 65536 --tokenize-workers 8 --out "$OUT"
# ce offline / in memory / online (RoBERTa-large), plus the eager-attention cost of setting 4
# against ce online with its RoBERTa-base teacher; two repeats keep it within the step's time
step bench_trainer    85 python3 benchmarks/bench_trainer.py --device cuda --out "$OUT" \
  --modes online-base ce+attn --repeats 2
# evaluate-fewshot against one process per grid point (LM-BFF's way) at DistilRoBERTa's shape:
# one seed x 6 grid points x 100 steps side by side, the unit's parts, the Table 2 estimate
step bench_fewshot    80 python3 benchmarks/bench_fewshot.py --device cuda --seeds 1 --steps 100 \
  --out "$OUT"
exit $status
