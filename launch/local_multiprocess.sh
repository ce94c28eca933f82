#!/usr/bin/env bash
# N CPU processes of one JAX run on this machine, joined through a local coordinator: the
# multi-host code path (jax.distributed, per-process data shards, Orbax from every process)
# without a cluster.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS COMMAND...
#   launch/local_multiprocess.sh 2 4 python -m marjax.main --config=configs/digits.py --workdir=/tmp/mp \
#       --config.mesh.fsdp=4
#
# Every process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
# marjax.parallel.distributed) and DEVICES_PER_PROCESS fake CPU devices (added to the caller's XLA_FLAGS);
# cross-process collectives on CPU go through gloo. Process i logs to $LOG_DIR/process_i.log (default: a temporary directory).
# When a process fails the others are stopped; exits with the first non-zero status.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND..." >&2
  exit 2
fi
num_processes=$1
devices_per_process=$2
shift 2
port=${COORDINATOR_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
log_dir=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$log_dir"

pids=()
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices_per_process ${XLA_FLAGS:-}" \
  JAX_COORDINATOR_ADDRESS="localhost:$port" \
  JAX_NUM_PROCESSES="$num_processes" \
  JAX_PROCESS_ID="$i" \
    "$@" > "$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
echo "started $num_processes processes (coordinator localhost:$port); logs in $log_dir" >&2

status=0
for i in "${!pids[@]}"; do
  code=0
  wait "${pids[$i]}" || code=$?
  if [[ $code -ne 0 ]]; then
    echo "process $i failed (exit $code); its log ends with:" >&2
    tail -n 20 "$log_dir/process_$i.log" >&2
    if [[ $status -eq 0 ]]; then
      status=$code
      kill "${pids[@]}" 2> /dev/null || true  # the others would wait for it in a collective forever
    fi
  fi
done
exit $status
