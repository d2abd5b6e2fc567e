#!/usr/bin/env bash
# The GPU checks. Distributed: a short nested training (LLaMA ~500M, sandwich K=3, 1 untimed + 2 timed steps)
# with FSDP2 (fully_shard per layer, bf16 gather/compute, fp32 master weights), then the same with DDP, on all
# GPUs of this machine; prints step time, tokens/s and peak memory per rank. Then bench/gpu_tokens.py on one GPU:
# compiled vs eager tokens/s (nested Qwen2 ~0.5B vs plain). ~5 minutes.
#   bash bench/gpu_check.sh                 # every GPU (nvidia-smi -L)
#   NGPU=2 bash bench/gpu_check.sh          # the first 2
#   QUICK=1 ACCEL=cpu NGPU=2 bash bench/gpu_check.sh    # tiny model on CPU (gloo): checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ACCEL=${ACCEL:-gpu}
if [ "$ACCEL" = gpu ]; then
  NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n "$NGPU"
else
  NGPU=${NGPU:-2}
fi
QUICK_FLAG=${QUICK:+--quick}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONWARNINGS=ignore
"$PY" -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
for strategy in fsdp ddp; do
  "$PY" -m bench.bench_ddp --check "$strategy" --accelerator "$ACCEL" --devices "$NGPU" $QUICK_FLAG 2>&1 \
    | grep -E "^ *(fsdp|ddp):|Error|error" || { echo "$strategy: FAILED"; exit 1; }
done
# one GPU: training tokens/s, nested Qwen2-shaped ~0.5B at the largest and a half-size subnet vs the plain
# transformers model of each shape, bf16 autocast + SDPA, eager and train.compile's compiled step
if [ "$ACCEL" = gpu ]; then
  "$PY" -m bench.gpu_tokens --device cuda $QUICK_FLAG || { echo "gpu_tokens: FAILED"; exit 1; }
else
  "$PY" -m bench.gpu_tokens --device cpu --quick || { echo "gpu_tokens: FAILED"; exit 1; }
fi
