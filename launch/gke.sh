#!/usr/bin/env bash
# Render launch/gke_jobset.yaml and apply it; DRY_RUN=1 prints the manifest and the
# per-host commands instead.
#   JOB_NAME=jshear-1 IMAGE=gcr.io/p/jshear:v1 CONFIG=configs/sheared_2p7b.py WORKDIR=/mnt/shared/r1 \
#   TPU_TYPE=tpu-v5p-slice TPU_TOPOLOGY=4x4x4 NUM_SLICES=1 HOSTS_PER_SLICE=16 CHIPS_PER_HOST=4 \
#   bash launch/gke.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for v in JOB_NAME IMAGE CONFIG WORKDIR TPU_TYPE TPU_TOPOLOGY NUM_SLICES HOSTS_PER_SLICE CHIPS_PER_HOST; do
  [[ -n "${!v:-}" ]] || { echo "error: set $v" >&2; exit 2; }
  export "${v?}"
done
manifest=$(python3 - "$HERE/gke_jobset.yaml" <<'PY'
import os, string, sys
print(string.Template(open(sys.argv[1]).read()).substitute(os.environ), end="")
PY
)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "$manifest"
  for ((s = 0; s < NUM_SLICES; s++)); do for ((h = 0; h < HOSTS_PER_SLICE; h++)); do
    echo "[slice $s host $h] python -m jshear.train --config=$CONFIG --workdir=$WORKDIR"
  done; done
  exit 0
fi
echo "$manifest" | kubectl apply -f -
