#!/usr/bin/env bash
# On a machine with CUDA, run this first: the engine's tests on CUDA, scan_bench for resnet56 in
# float32 / tf32 / bfloat16, the 50,000-image slice, and surface_bench (full vs adaptive, and the
# moonshot slice). Each bench appends its row, naming the GPU, to bench/RESULTS.md.
#
#   bash bench/gpu_check.sh              # MNIST from $RESNET_TOOLKIT_DATA, shared/datasets or ../shared/datasets
#
# The device image has no plotly and reaches no package registry: the checkout runs in place
# (PYTHONPATH=.), nothing is installed. With $OUT set (the device runner's output folder) the log
# and the updated RESULTS.md are copied there. RESNET56_CHECKPOINT: a trained ResNet-56 (MNIST) for
# the moonshot slice (default runs/resnet56_mnist/final.pt; else surface_bench trains one quickly).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
LOG=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$LOG") 2>&1

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')" || exit 1
python -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

DATA=${RESNET_TOOLKIT_DATA:-}
for candidate in shared/datasets ../shared/datasets; do
  [ -z "$DATA" ] && [ -d "$candidate/MNIST" ] && DATA=$candidate
done
export RESNET_TOOLKIT_DATA=${DATA:-shared/datasets}
if [ -n "$DATA" ]; then MNIST=(--dataset mnist --data-root "$DATA"); else
  echo "gpu_check: MNIST not found (set RESNET_TOOLKIT_DATA); benches run on synthetic data"
  MNIST=(--dataset synthetic)
fi
status=0
step() { echo; echo "== $*"; "$@" || { echo "gpu_check: FAILED: $*"; status=1; }; }

# 1. The engine's device-parametrized tests, CUDA variants only (-m cuda).
if python -c "import pytest" 2>/dev/null; then
  step python -m pytest -q -p no:cacheprovider -m cuda tests/test_evaluate.py tests/test_sampling.py
else
  echo "gpu_check: pytest is not installed here; skipping the tests"; status=1
fi

# 2. Throughput against the naive loop, per dtype (the lower ones report their deviation).
for dtype in float32 tf32 bfloat16; do
  step python bench/scan_bench.py --model resnet56 --grid 5 --samples 2000 --device cuda --dtype "$dtype" \
    "${MNIST[@]}" --record
done

# 3. The 50,000-image slice (a measured slice of the 51x51 moonshot: 25 points x 50,000 images;
#    the naive loop is timed on 2 of them).
[ -n "$DATA" ] && step python bench/scan_bench.py --model resnet56 --grid 5 --samples 50000 --device cuda \
  --naive-points 2 "${MNIST[@]}" --record
[ -n "$DATA" ] && step python bench/scan_bench.py --model resnet56 --grid 5 --samples 50000 --device cuda \
  --dtype bfloat16 --naive-points 2 "${MNIST[@]}" --record

# 4. Full vs adaptive: the 10,000-image target, then the moonshot's 6x6 slice of 51x51 at N = 50,000.
step python bench/surface_bench.py --model resnet8 --grid 9 --samples 10000 --device cuda "${MNIST[@]}" --record
CK=${RESNET56_CHECKPOINT:-runs/resnet56_mnist/final.pt}
CKARG=(); [ -f "$CK" ] && CKARG=(--checkpoint "$CK")
[ -n "$DATA" ] && step python bench/surface_bench.py --model resnet56 "${CKARG[@]}" --grid 51 --subgrid 6 \
  --samples 50000 --device cuda "${MNIST[@]}" --record

[ -n "${OUT:-}" ] && cp bench/RESULTS.md "$OUT/RESULTS.md"
echo; echo "gpu_check: $([ $status = 0 ] && echo all steps passed || echo some steps FAILED) (rows in bench/RESULTS.md)"
exit $status
