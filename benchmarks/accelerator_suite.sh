#!/usr/bin/env bash
# The accelerator-speed figures in one place: MAR-B/L/H training throughput (bf16), MAR-L sampling
# at the paper's setting, and the MAR-L step breakdown, each with the reference PyTorch MAR timed
# beside it when REFERENCE_CODE names a checkout of LTH14/mar. One JSON line per figure, appended
# to $RESULTS (default accelerator.jsonl). Each part runs well under 10 minutes on one H100.
# The train part uses one mask bucket and scanned blocks: on an H200 the ImageNet configs' step
# (3 buckets, unscanned) took over 3 minutes to compile for MAR-L, this one 36 s. MAR-H runs with
# remat=full: without it batch 64 asked for more than JAX's share of an H200's 141 GB (not yet
# run with it; BENCHMARKS.md, "First accelerator figures").
#
#   bash benchmarks/accelerator_suite.sh train      # MAR-B/L/H, batch 64 per device, bf16 (~2 min each)
#   bash benchmarks/accelerator_suite.sh sample     # MAR-L, 64 steps, batch 256, CFG 3.0 linear, bf16 (~4.5 min)
#   bash benchmarks/accelerator_suite.sh breakdown  # MAR-L train step: transformer / DiffLoss / rest
#   bash benchmarks/accelerator_suite.sh families   # LlamaGen GPT-B and VAR-d16 train steps, batch 64, bf16
#   REFERENCE_CODE=/path/to/mar bash benchmarks/accelerator_suite.sh train
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
results="${RESULTS:-accelerator.jsonl}"
reference=()
if [[ -n "${REFERENCE_CODE:-}" ]]; then
  reference=(--reference-code="$REFERENCE_CODE" --reference-python="${REFERENCE_PYTHON:-python3}")
fi

case "${1:-}" in
  train)
    for size in mar_base mar_large mar_huge; do
      remat=none
      [[ "$size" == mar_huge ]] && remat=full
      python3 benchmarks/train_throughput.py --size="$size" --batch=64 --bf16 --steps=5 --mask-buckets=1 --scan-layers \
        --remat="$remat" "${reference[@]}" | tee -a "$results"
    done ;;
  sample)
    python3 benchmarks/sample_throughput.py --size=mar_large --batch=256 --num-iter=64 --diffusion-steps=100 \
      --cfg=3.0 --cfg-schedule=linear --bf16 --repeats=1 "${reference[@]}" | tee -a "$results" ;;
  breakdown)
    python3 benchmarks/step_breakdown.py --size=mar_large --batch=64 --bf16 | tee -a "$results" ;;
  families)
    for config in configs/llamagen_gpt.py:gpt_b configs/var_imagenet.py:d16; do
      python3 benchmarks/task_train_throughput.py --config="$config" --batch=64 --steps=10 \
        --set model.dtype=bfloat16 | tee -a "$results"
    done ;;
  *)
    echo "usage: $0 train|sample|breakdown|families" >&2
    exit 2 ;;
esac
