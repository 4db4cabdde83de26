#!/usr/bin/env bash
# Cloud TPU VMs (single host or pod slice) for nf: every worker runs the same nf-train command and
# jax.distributed connects them (detected by nf.train on a TPU VM).
#
#   launch/tpu.sh SUBCOMMAND --name=NAME --zone=ZONE --accelerator=TYPE [--project=P] [--version=V]
#                 [--spot|--queued] [--no-plan] [--dry-run] [-- nf-train arguments]
#
#   create  a TPU VM of TYPE (e.g. v4-32, v5litepod-64) with runtime V; --spot: spot capacity;
#           --queued: through a queued resource (waits for capacity)
#   setup   copy this checkout to every worker and `pip install` it there
#   run     the same nf-train command on all workers, e.g.
#           -- --config=configs/resnet_imagenet.py:nf_resnet50 --workdir=gs://BUCKET/runs/r50
#           (the workdir must be on gs://, shared by all workers); output goes to ~/nf-train.log.
#           First, on this machine, `nf-plan` compiles the config for --accelerator=TYPE (needs
#           `pip install -e '.[tpu]'` here; --cost=per_block: minutes, not an hour, for deep
#           recipes) and the run is refused when it does not fit HBM (the plan prints settings
#           that do); --no-plan skips this. NF_PLAN overrides the command.
#   logs    the last lines of ~/nf-train.log of every worker
#   ssh     a shell on worker 0 (or run the arguments after -- on all workers)
#   delete  delete the TPU VM (and its queued resource with --queued)
#
# --dry-run prints every command (nf-plan, gcloud) instead of running it (gcloud need not be installed, but
# the project must be given or be gcloud's configured one). The project defaults to
# `gcloud config get-value project`.
set -euo pipefail

die() {
  echo "launch/tpu.sh: error: $*" >&2
  exit 2
}

usage() {
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
}

SUBCOMMAND="${1:-}"
case "${SUBCOMMAND}" in
  create | setup | run | logs | ssh | delete) shift ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  "") die "missing SUBCOMMAND (create, setup, run, logs, ssh, delete); see --help" ;;
  *) die "unknown SUBCOMMAND '${SUBCOMMAND}' (create, setup, run, logs, ssh, delete)" ;;
esac

NAME="" ZONE="" ACCELERATOR="" PROJECT="" VERSION="" DRY_RUN=0 SPOT=0 QUEUED=0 NO_PLAN=0
EXTRA=()
while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --no-plan) NO_PLAN=1 ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    *) die "unknown option '$1' (options take the form --key=value; nf-train arguments go after --)" ;;
  esac
  shift
done

[[ -n "${NAME}" ]] || die "--name=NAME is required"
[[ -n "${ZONE}" ]] || die "--zone=ZONE is required (e.g. --zone=us-central2-b for v4, us-west4-a for v5e)"
if [[ "${SUBCOMMAND}" == create && -z "${ACCELERATOR}" ]]; then
  die "create needs --accelerator=TYPE (e.g. v4-32, v5litepod-64)"
fi
if ! command -v gcloud >/dev/null 2>&1 && ((!DRY_RUN)); then
  die "gcloud not found: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
fi
if [[ -z "${PROJECT}" ]] && command -v gcloud >/dev/null 2>&1; then
  PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
  [[ "${PROJECT}" == "(unset)" ]] && PROJECT=""
fi
[[ -n "${PROJECT}" ]] || die "no project: pass --project=PROJECT or run 'gcloud config set project PROJECT'"

# Default runtime per TPU generation (https://cloud.google.com/tpu/docs/runtimes).
if [[ -z "${VERSION}" ]]; then
  case "${ACCELERATOR}" in
    v5litepod-* | v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) VERSION="tpu-ubuntu2204-base" ;;
  esac
fi

# One argument as a shell word: bare when safe, else single-quoted (--key='value' for options).
quote() {
  local a="$1" q="'\\''"
  if [[ "${a}" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "${a}"
  elif [[ "${a}" =~ ^(--[A-Za-z0-9_-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/${q}}"
  else
    printf "'%s'" "${a//\'/${q}}"
  fi
}

# Run (or with --dry-run print) one command, quoted so a printed line can be pasted into a shell.
run() {
  if ((DRY_RUN)); then
    local quoted=() arg
    for arg in "$@"; do quoted+=("$(quote "${arg}")"); done
    echo "${quoted[*]}"
  else
    "$@"
  fi
}

# nf-plan's slice name of a Cloud TPU accelerator type (v5e is "v5litepod-N" to gcloud).
plan_topology() {
  case "$1" in
    v5litepod-*) echo "v5e-${1#v5litepod-}" ;;
    *) echo "$1" ;;
  esac
}

# Compile the run's config for the slice here (nf-plan) and stop when it does not fit.
plan_or_refuse() {
  local plan_args=() arg plan_cmd status=0
  [[ -n "${ACCELERATOR}" ]] || die "run plans the config for the slice first: pass --accelerator=TYPE (as at create), or --no-plan"
  for arg in "${EXTRA[@]}"; do
    case "${arg}" in --config=* | --config.*) plan_args+=("${arg}") ;; esac
  done
  read -r -a plan_cmd <<<"${NF_PLAN:-nf-plan}"
  plan_cmd+=("--topology=$(plan_topology "${ACCELERATOR}")" --cost=per_block "${plan_args[@]+"${plan_args[@]}"}")
  if ((DRY_RUN)); then
    run "${plan_cmd[@]}"
    return
  fi
  (cd "${REPO}" && "${plan_cmd[@]}") || status=$?
  if ((status == 3)); then  # nf-plan: compiled, does not fit
    echo "launch/tpu.sh: error: the config does not fit ${ACCELERATOR} (nf-plan above lists settings that do);" \
      "change it, or pass --no-plan to start anyway" >&2
    exit 3
  elif ((status)); then
    die "nf-plan failed (exit status ${status}) planning for ${ACCELERATOR}; fix the config, or pass --no-plan"
  fi
}

TPU=(gcloud compute tpus tpu-vm)
WHERE=("--zone=${ZONE}" "--project=${PROJECT}")
ALL=("${WHERE[@]}" --worker=all)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="nf"

case "${SUBCOMMAND}" in
  create)
    flags=()
    ((SPOT)) && flags+=(--spot)
    if ((QUEUED)); then
      run gcloud compute tpus queued-resources create "${NAME}" --node-id="${NAME}" "${WHERE[@]}" \
        --accelerator-type="${ACCELERATOR}" --runtime-version="${VERSION}" "${flags[@]+"${flags[@]}"}"
    else
      run "${TPU[@]}" create "${NAME}" "${WHERE[@]}" --accelerator-type="${ACCELERATOR}" \
        --version="${VERSION}" "${flags[@]+"${flags[@]}"}"
    fi
    ;;
  setup)
    run "${TPU[@]}" scp --recurse "${REPO}/nf" "${REPO}/configs" "${REPO}/tools" "${REPO}/launch" \
      "${REPO}/pyproject.toml" "${REPO}/README.md" "${NAME}:${REMOTE_DIR}" "${ALL[@]}"
    run "${TPU[@]}" ssh "${NAME}" "${ALL[@]}" \
      --command="pip install -U 'jax[tpu]' && pip install -e ~/${REMOTE_DIR}"
    ;;
  run)
    ((${#EXTRA[@]})) || die "run needs nf-train arguments after --, e.g. -- --config=configs/resnet_imagenet.py:nf_resnet50 --workdir=gs://BUCKET/runs/r50"
    workdir=""
    for arg in "${EXTRA[@]}"; do
      [[ "${arg}" == --workdir=* ]] && workdir="${arg#--workdir=}"
    done
    [[ "${workdir}" == gs://* ]] || die "run needs --workdir=gs://BUCKET/... after -- (all workers share it), got '${workdir}'"
    ((NO_PLAN)) || plan_or_refuse
    args="$(printf '%q ' "${EXTRA[@]}")"
    run "${TPU[@]}" ssh "${NAME}" "${ALL[@]}" \
      --command="cd ~/${REMOTE_DIR} && nohup nf-train --distributed=on ${args}> ~/nf-train.log 2>&1 &"
    ;;
  logs)
    run "${TPU[@]}" ssh "${NAME}" "${ALL[@]}" --command="tail -n 50 ~/nf-train.log"
    ;;
  ssh)
    if ((${#EXTRA[@]})); then
      run "${TPU[@]}" ssh "${NAME}" "${ALL[@]}" --command="$(printf '%q ' "${EXTRA[@]}")"
    else
      run "${TPU[@]}" ssh "${NAME}" "${WHERE[@]}" --worker=0
    fi
    ;;
  delete)
    if ((QUEUED)); then
      run gcloud compute tpus queued-resources delete "${NAME}" "${WHERE[@]}" --force --quiet
    else
      run "${TPU[@]}" delete "${NAME}" "${WHERE[@]}" --quiet
    fi
    ;;
esac
