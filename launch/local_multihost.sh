#!/usr/bin/env bash
# Two processes on this machine, gloo CPU collectives over 127.0.0.1: the multi-host code path
# (jax.distributed + a global mesh) without a cluster. Extra args go to jaxprof.train.
#   bash launch/local_multihost.sh --config=configs/girl.py:tiny --workdir=/tmp/mh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-$((20000 + RANDOM % 20000))}
NUM=${NUM_PROCESSES:-2}
pids=()
for ((i = 0; i < NUM; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}" \
    .venv/bin/python -m jaxprof.train --coordinator="127.0.0.1:${PORT}" --num_processes="$NUM" \
    --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
