#!/usr/bin/env bash
# A JAX cluster on localhost: N nf-train processes x M CPU devices (see tools/local_cluster.py).
#   launch/local.sh --processes=2 --devices=2 --workdir=runs/local -- --config=configs/quickstart.py
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${here}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python}" "${here}/tools/local_cluster.py" "$@"
