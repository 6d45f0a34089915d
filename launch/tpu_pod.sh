#!/usr/bin/env bash
# TPU VM pod launcher: the same command on every worker; jax.distributed.initialize()
# auto-detects the pod. The repo (with `make setup` done) must exist on every worker at $REPO.
#
#   TPU=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh configs/sheared_2p7b.py /mnt/shared/run1
#   DRY_RUN=1 TPU=my-v5p-64 ZONE=us-east5-a WORKERS=8 bash launch/tpu_pod.sh CONFIG WORKDIR
# WORKDIR must be a filesystem every worker shares (e.g. a Filestore/NFS mount).
set -euo pipefail
CONFIG=${1:?usage: tpu_pod.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: tpu_pod.sh CONFIG WORKDIR [overrides...]}
shift 2
TPU=${TPU:?set TPU to the TPU VM name}
ZONE=${ZONE:?set ZONE}
REPO=${REPO:-\$HOME/jshear}
REMOTE="cd $REPO && TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 .venv/bin/python -m jshear.train --config=$CONFIG --workdir=$WORKDIR${*:+ $*}"
GCLOUD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$REMOTE")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "${GCLOUD[*]}"
  for ((w = 0; w < ${WORKERS:-1}; w++)); do echo "[worker $w] $REMOTE"; done
  exit 0
fi
"${GCLOUD[@]}"
