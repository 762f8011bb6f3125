#!/usr/bin/env bash
# The same train command on every host of a TPU pod slice (jax.distributed finds the pod itself).
#   TPU=my-v5e-32 ZONE=us-west4-a bash launch/tpu_pod.sh --config=configs/girl.py \
#     --workdir=gs://bucket/runs/girl --config.mesh.fsdp=8 --config.mesh.rules=fsdp_tp
set -euo pipefail
: "${TPU:?set TPU to the pod name}" "${ZONE:?set ZONE}"
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/jaxprof && bash scripts/setup.sh && .venv/bin/pip install -q 'jax[tpu]' && \
   .venv/bin/python -m jaxprof.train${ARGS}"
