#!/usr/bin/env bash
# Run one marjax command on every worker of a Cloud TPU VM pod slice; the workdir is on GCS.
# JAX finds the pod by itself (marjax.parallel.distributed calls jax.distributed.initialize()), every
# worker reads its own shard of the data, and Orbax writes the checkpoints from all workers.
#
#   TPU_NAME=marjax-v5p-128 ZONE=us-east5-a launch/tpu_pod.sh create    # once: the slice
#   TPU_NAME=marjax-v5p-128 ZONE=us-east5-a launch/tpu_pod.sh setup     # once: code + packages
#   TPU_NAME=marjax-v5p-128 ZONE=us-east5-a WORKDIR=gs://my-bucket/mar_huge \
#     launch/tpu_pod.sh run --config=configs/mar_huge.py --config.mesh.fsdp=64
#   TPU_NAME=marjax-v5p-128 ZONE=us-east5-a launch/tpu_pod.sh delete
#
# Optional: ACCELERATOR_TYPE (default v5p-128), RUNTIME_VERSION (default v2-alpha-tpuv5),
# REPO_URL (what `setup` clones; default: this checkout's origin).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5p-128}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}
action=${1:?usage: $0 create|setup|run|delete [marjax.main flags...]}
shift

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

case "$action" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  setup)
    repo_url=${REPO_URL:-$(git config --get remote.origin.url)}
    on_all_workers "rm -rf marjax && git clone $repo_url marjax && cd marjax && pip install -e '.[tpu]'"
    ;;
  run)
    : "${WORKDIR:?set WORKDIR, e.g. gs://bucket/run (shared by all workers)}"
    on_all_workers "cd marjax && python3 -m marjax.main --workdir=$WORKDIR $(printf '%q ' "$@")"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    echo "unknown action $action: use create, setup, run or delete" >&2
    exit 2
    ;;
esac
