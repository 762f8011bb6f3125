#!/usr/bin/env bash
# The same train command on every host of a TPU pod slice (jax.distributed finds the pod itself).
#   TPU=my-v5e-32 ZONE=us-west4-a TOPOLOGY=v5e:4x8 bash launch/tpu_pod.sh \
#     --config=configs/girl.py --workdir=gs://bucket/runs/girl \
#     --config.mesh.data=1 --config.mesh.fsdp=8 --config.mesh.tensor=4 --config.mesh.rules=fsdp_tp
# First, on this machine (no TPU needed), every step of the config is compiled for the slice's
# topology with the same flags; the launch stops if one does not fit in HBM:
#   .venv/bin/python -m jaxprof.compile_check --topology=$TOPOLOGY <the same flags, no --workdir>
# (docs/scaling.md). SKIP_CHECK=1 launches without it.
set -euo pipefail
: "${TPU:?set TPU to the pod name}" "${ZONE:?set ZONE}" "${TOPOLOGY:?set TOPOLOGY, e.g. v5e:4x8}"
cd "$(dirname "$0")/.."
if [ "${SKIP_CHECK:-0}" != 1 ]; then
  CHECK=()
  for a in "$@"; do [[ "$a" == --workdir=* ]] || CHECK+=("$a"); done
  .venv/bin/python -m jaxprof.compile_check --topology="$TOPOLOGY" "${CHECK[@]}"
fi
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/jaxprof && bash scripts/setup.sh && .venv/bin/pip install -q -e '.[gcs]' && \
   .venv/bin/python -m jaxprof.train${ARGS}"
