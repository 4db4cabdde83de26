#!/usr/bin/env bash
# nf against timm on one accelerator, side by side in one process pair (tools/benchmark.py --peer):
# nf in bfloat16 compute (float32 master weights), timm under bfloat16 autocast (AMP) in
# channels-last, the same batch, recipe (the ImageNet configs: SGD-Nesterov, weight decay, label
# smoothing, EMA, AGC for NFNets, the same dropout / stochastic depth) and interleaved rounds.
#
#   bash tools/accelerator_side_by_side.sh OUT_DIR [PEER_PYTHON]
#
# PEER_PYTHON (default python3) is a Python with torch (CUDA) and timm; it may be nf's own Python
# on a machine image that has both. Writes OUT_DIR/{r50_224,f0_192}.{json,log}.
set -uo pipefail
out=${1:?usage: $0 OUT_DIR [PEER_PYTHON]}
peer=${2:-python3}
python=${NF_PYTHON:-python3}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false # timm's process shares the GPU
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
run() {
  local name=$1
  shift
  "$python" tools/benchmark.py --peer=timm --peer_python="$peer" --dtype=bfloat16 --compare=false \
    --steps=20 --warmup=3 --json "$@" >"$out/$name.json" 2>"$out/$name.log"
  echo "$name: exit $?"
  tail -n 3 "$out/$name.log"
}
run r50_224 --config=configs/resnet_imagenet.py:nf_resnet50 --image_size=224 --batch_size=256
run f0_192 --config=configs/nfnet_imagenet.py:f0 --image_size=192 --batch_size=256
