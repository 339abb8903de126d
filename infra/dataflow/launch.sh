#!/usr/bin/env bash
# Build the LVD builder Flex Template and run `lvd curate --engine beam` on Dataflow with GPU workers.
# Run from anywhere; paths are resolved against the repository root. See infra/README.md.
#
# The run directory (--out) is a gs:// location: Dataflow workers mount nothing, and every stage
# reads and writes the run directory through fsspec (gcsfs; curation/core/storage.py). Not yet run on
# Dataflow itself: see infra/dataflow/README.md, "Status".
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: infra/dataflow/launch.sh [options]

Builds the worker/launcher image (infra/docker/Dockerfile.cuda, target `dataflow`), builds the
Flex Template spec from infra/dataflow/metadata.json with gcloud, and runs it on Dataflow with
GPU workers (Runner v2, custom SDK container, worker_accelerator service option).
Every option can also be given as the environment variable in brackets.

The run directory (--out) must be on GCS: Dataflow workers mount nothing, and every stage reads
and writes it through gcsfs (curation/core/storage.py). --dry-run validates the options and prints the
commands without running them.

Required:
  --project ID           Google Cloud project                                   [PROJECT]
  --bucket gs://B[/P]    bucket (and prefix) for the template, temp and staging [BUCKET]
  --pool gs://...        uncurated image pool                                   [POOL]
  --out gs://...         run directory of the curated output                    [OUT]

Pipeline:
  --recipe NAME          recipe name or gs:// YAML (default: lvd142m)           [RECIPE]
  --seeds-config gs://.. seed datasets YAML                                     [SEEDS_CONFIG]

Workers:
  --region R             Dataflow region (default: us-central1)                 [REGION]
  --gpu-type T           nvidia-l4 | nvidia-tesla-t4 | nvidia-tesla-a100 | nvidia-a100-80gb |
                         nvidia-h100-80gb | none (CPU workers only) (default: nvidia-l4) [GPU_TYPE]
  --gpu-count N          GPUs per worker (default: 1)                           [GPU_COUNT]
  --nvidia-driver V      install-nvidia-driver version: latest | default (default: latest;
                         torch 2.14.1 wheels are CUDA 13.0 and need driver >= 580) [NVIDIA_DRIVER]
  --machine-type M       worker machine type (default: matches --gpu-type, e.g. g2-standard-8) [MACHINE_TYPE]
  --max-workers N        autoscaling cap (default: 100)                         [MAX_WORKERS]
  --num-workers N        initial workers (default: Dataflow's)                  [NUM_WORKERS]
  --job-name NAME        (default: lvd-curate-<UTC timestamp>)                  [JOB_NAME]

Image and template:
  --image URI            worker + launcher image (default:
                         REGION-docker.pkg.dev/PROJECT/lvd/lvd-dataflow-cuda:TAG, or
                         lvd-dataflow-cpu with --gpu-type none)                 [IMAGE]
  --tag TAG              image and template tag (default: 0.1.0)                [TAG]
  --builder B            docker (local docker build + push) | cloudbuild (gcloud builds submit) |
                         none (the image exists already) (default: docker)      [BUILDER]
  --mode M               flex: build the Flex Template and run it (default) |
                         direct: run `lvd curate --engine beam --runner DataflowRunner` from
                         this machine (the driver stays here until the job ends) [MODE]

  --dry-run              print the commands, run nothing                        [DRY_RUN=1]
  -h, --help             this help

Example:
  infra/dataflow/launch.sh --project my-proj --bucket gs://my-bucket/lvd \
      --pool gs://my-bucket/lvd/pool --seeds-config gs://my-bucket/lvd/seeds.yaml \
      --out gs://my-bucket/lvd/lvd142m --gpu-type nvidia-l4 --max-workers 200 --dry-run
EOF
}

die() {
  echo "launch.sh: error: $*" >&2
  echo "Run infra/dataflow/launch.sh --help for usage." >&2
  exit 2
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

PROJECT="${PROJECT:-}"
BUCKET="${BUCKET:-}"
POOL="${POOL:-}"
OUT="${OUT:-}"
RECIPE="${RECIPE:-lvd142m}"
SEEDS_CONFIG="${SEEDS_CONFIG:-}"
REGION="${REGION:-us-central1}"
GPU_TYPE="${GPU_TYPE:-nvidia-l4}"
GPU_COUNT="${GPU_COUNT:-1}"
NVIDIA_DRIVER="${NVIDIA_DRIVER:-latest}"
MACHINE_TYPE="${MACHINE_TYPE:-}"
MAX_WORKERS="${MAX_WORKERS:-100}"
NUM_WORKERS="${NUM_WORKERS:-}"
JOB_NAME="${JOB_NAME:-}"
IMAGE="${IMAGE:-}"
TAG="${TAG:-0.1.0}"
BUILDER="${BUILDER:-docker}"
MODE="${MODE:-flex}"
DRY_RUN="${DRY_RUN:-0}"

need_value() {
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "option $1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
  esac
  opt="$1"
  case "$opt" in
    --project | --bucket | --pool | --out | --recipe | --seeds-config | --region | --gpu-type | \
      --gpu-count | --nvidia-driver | --machine-type | --max-workers | --num-workers | --job-name | \
      --image | --tag | --builder | --mode) need_value "$@" ;;
    *) die "unknown option: $opt" ;;
  esac
  case "$opt" in
    --project) PROJECT="$2" ;;
    --bucket) BUCKET="$2" ;;
    --pool) POOL="$2" ;;
    --out) OUT="$2" ;;
    --recipe) RECIPE="$2" ;;
    --seeds-config) SEEDS_CONFIG="$2" ;;
    --region) REGION="$2" ;;
    --gpu-type) GPU_TYPE="$2" ;;
    --gpu-count) GPU_COUNT="$2" ;;
    --nvidia-driver) NVIDIA_DRIVER="$2" ;;
    --machine-type) MACHINE_TYPE="$2" ;;
    --max-workers) MAX_WORKERS="$2" ;;
    --num-workers) NUM_WORKERS="$2" ;;
    --job-name) JOB_NAME="$2" ;;
    --image) IMAGE="$2" ;;
    --tag) TAG="$2" ;;
    --builder) BUILDER="$2" ;;
    --mode) MODE="$2" ;;
  esac
  shift 2
done

# ---- validation ----------------------------------------------------------------------------
[[ -n "$PROJECT" ]] || die "--project (PROJECT) is required"
[[ "$BUCKET" == gs://?* ]] || die "--bucket (BUCKET) must be a gs:// location, got '${BUCKET}'"
[[ "$POOL" == gs://?* ]] || die "--pool (POOL) must be a gs:// location, got '${POOL}'"
[[ "$OUT" == gs://?* ]] || die "--out (OUT) must be a gs:// location, got '${OUT}'"
[[ -z "$SEEDS_CONFIG" || "$SEEDS_CONFIG" == gs://?* ]] || die "--seeds-config must be a gs:// location"
for value in "$RECIPE" "$POOL" "$OUT" "$SEEDS_CONFIG"; do
  [[ "$value" != *,* ]] || die "template parameters cannot contain commas: '$value'"
done
[[ "$GPU_COUNT" =~ ^[1-9][0-9]*$ ]] || die "--gpu-count must be a positive integer"
[[ "$MAX_WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--max-workers must be a positive integer"
[[ -z "$NUM_WORKERS" || "$NUM_WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--num-workers must be a positive integer"
case "$MODE" in flex | direct) ;; *) die "--mode must be flex or direct" ;; esac
case "$BUILDER" in docker | cloudbuild | none) ;; *) die "--builder must be docker, cloudbuild or none" ;; esac
case "$NVIDIA_DRIVER" in latest | default) ;; *) die "--nvidia-driver must be latest or default" ;; esac

# GPU type -> default machine type with one GPU (Dataflow attaches GPU_COUNT GPUs to each worker;
# for more than one pick a matching machine type with --machine-type).
case "$GPU_TYPE" in
  none) default_machine=n2-standard-16 ;;
  nvidia-l4) default_machine=g2-standard-8 ;;
  nvidia-tesla-t4) default_machine=n1-standard-8 ;;
  nvidia-tesla-a100) default_machine=a2-highgpu-1g ;;
  nvidia-a100-80gb) default_machine=a2-ultragpu-1g ;;
  nvidia-h100-80gb) default_machine=a3-highgpu-1g ;;
  *) die "unsupported --gpu-type '$GPU_TYPE'" ;;
esac
MACHINE_TYPE="${MACHINE_TYPE:-$default_machine}"

BUCKET="${BUCKET%/}"
JOB_NAME="${JOB_NAME:-lvd-curate-$(date -u +%Y%m%d-%H%M%S)}"
[[ "$JOB_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--job-name must match [a-z]([-a-z0-9]*[a-z0-9])?"

if [[ "$GPU_TYPE" == none ]]; then
  DOCKERFILE=infra/docker/Dockerfile.cpu
  IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/lvd/lvd-dataflow-cpu:${TAG}}"
  ACCELERATOR=""
else
  DOCKERFILE=infra/docker/Dockerfile.cuda
  IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/lvd/lvd-dataflow-cuda:${TAG}}"
  ACCELERATOR="worker_accelerator=type:${GPU_TYPE};count:${GPU_COUNT};install-nvidia-driver:${NVIDIA_DRIVER}"
fi
TEMPLATE="${BUCKET}/templates/lvd-curate-${TAG}.json"
TEMP_LOCATION="${BUCKET}/tmp"
STAGING_LOCATION="${BUCKET}/staging"

# ---- helpers --------------------------------------------------------------------------------
run() {
  # Print the command shell-quoted (copy-pastable); run it unless this is a dry run.
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

cd "$REPO_ROOT"

# ---- 1. image ---------------------------------------------------------------------------------
case "$BUILDER" in
  docker)
    run docker build -f "$DOCKERFILE" --target dataflow -t "$IMAGE" .
    run docker push "$IMAGE"
    ;;
  cloudbuild)
    run gcloud builds submit . --project="$PROJECT" --region="$REGION" \
      --config=infra/dataflow/cloudbuild.yaml \
      --substitutions="_IMAGE=${IMAGE},_DOCKERFILE=${DOCKERFILE},_TARGET=dataflow"
    ;;
  none) ;;
esac

# ---- 2./3. template and job -----------------------------------------------------------------
if [[ "$MODE" == flex ]]; then
  run gcloud dataflow flex-template build "$TEMPLATE" \
    --project="$PROJECT" \
    --image="$IMAGE" \
    --sdk-language=PYTHON \
    --metadata-file=infra/dataflow/metadata.json \
    --additional-experiments=use_runner_v2

  params="recipe=${RECIPE},pool=${POOL},out=${OUT}"
  [[ -z "$SEEDS_CONFIG" ]] || params+=",seeds_config=${SEEDS_CONFIG}"
  # Workers run the same image as the launcher (the package is preinstalled there).
  params+=",sdk_container_image=${IMAGE},sdk_location=container"

  experiments="use_runner_v2"
  [[ -z "$ACCELERATOR" ]] || experiments+=",${ACCELERATOR}"

  job=(gcloud dataflow flex-template run "$JOB_NAME"
    --project="$PROJECT"
    --region="$REGION"
    --template-file-gcs-location="$TEMPLATE"
    --temp-location="$TEMP_LOCATION"
    --staging-location="$STAGING_LOCATION"
    --worker-machine-type="$MACHINE_TYPE"
    --max-workers="$MAX_WORKERS"
    --additional-experiments="$experiments"
    --parameters="$params")
  [[ -z "$NUM_WORKERS" ]] || job+=(--num-workers="$NUM_WORKERS")
  run "${job[@]}"
else
  job=(lvd curate --engine beam
    --recipe "$RECIPE" --pool "$POOL" --out "$OUT")
  [[ -z "$SEEDS_CONFIG" ]] || job+=(--seeds-config "$SEEDS_CONFIG")
  job+=(--runner DataflowRunner --project "$PROJECT" --region "$REGION" --temp-location "$TEMP_LOCATION")
  [[ -z "$ACCELERATOR" ]] || job+=(--dataflow-service-options "$ACCELERATOR")
  # Beam pipeline options, passed through verbatim.
  job+=(--
    --job_name="$JOB_NAME"
    --staging_location="$STAGING_LOCATION"
    --sdk_container_image="$IMAGE"
    --sdk_location=container
    --experiments=use_runner_v2
    --machine_type="$MACHINE_TYPE"
    --max_num_workers="$MAX_WORKERS")
  [[ -z "$NUM_WORKERS" ]] || job+=(--num_workers="$NUM_WORKERS")
  run "${job[@]}"
fi
