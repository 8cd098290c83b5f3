#!/usr/bin/env bash
# Build or push the project's images with whichever engine is here: docker, podman or buildah.
#
#   images/build.sh build [cpu|gpu|all]     tag REGISTRY/dreamfusion-KIND:VERSION
#   images/build.sh push  [cpu|gpu|all]
#
# VERSION is dreamfusion.__version__ (the one place it is defined); REGISTRY defaults to the one the
# compiled pipelines name (components/platform.py). A rebuild removes the image it replaces once no name
# is left on it. Environment:
#   ENGINE       docker | podman | buildah (default: the first that works here)
#   REGISTRY     where to tag and push (recompile the pipelines with DREAMFUSION_IMAGE_REGISTRY set
#                to the same value so that they name these images)
#   BASE         base image (default docker.io/library/debian:bookworm-slim)
#   TORCH_INDEX  index of the CPU torch build (cpu image); empty: only WHEELS
#   WHEELS       a folder of wheels (a local CPU torch wheel), mounted read-only at /wheels (podman, buildah)
#   SOURCES      a folder of third-party checkouts (tiny-cuda-nn with its submodules, nvdiffrast) at the
#                gpu image's pinned commits, mounted read-only at /third_party (podman, buildah); else GitHub
#   PIP_CA       a CA bundle pip must trust inside the build, passed as a build secret (never stored)
#   LAYERS       false: keep no intermediate layers (podman, buildah; with the vfs driver each layer is a
#                full copy of the file system, which the gpu image's 6 GB make costly)
#   TARGET       stop at this build stage (gpu: toolchain, sources, builder)
#   CUDA_ARCHITECTURES, MAX_JOBS   gpu image: architectures to build for ("80;86;89;90"), compile jobs
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-build}
kind=${2:-all}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' dreamfusion/__init__.py)
default_registry=$(sed -n 's/^DEFAULT_REGISTRY = "\(.*\)"$/\1/p' components/platform.py)
registry=${REGISTRY:-$default_registry}
[ -n "$version" ] && [ -n "$registry" ] || { echo "error: cannot read the version or registry" >&2; exit 2; }
case "$kind" in cpu|gpu) kinds=("$kind") ;; all) kinds=(cpu gpu) ;; *) echo "error: kind must be cpu, gpu or all, not '$kind'" >&2; exit 2 ;; esac

engine=${ENGINE:-}
if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then engine=podman
  elif command -v buildah >/dev/null; then engine=buildah
  else echo "error: no container engine: install docker, podman or buildah" >&2; exit 2
  fi
fi
# buildah needs no daemon: as root, the vfs driver and chroot isolation work in containers and VMs alike.
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
run() { if [ "$engine" = buildah ]; then "${buildah[@]}" "$@"; else "$engine" "$@"; fi; }

for k in "${kinds[@]}"; do
  image="$registry/dreamfusion-$k:$version"
  if [ "$action" = push ]; then
    # An image built under the default name goes to another registry under that registry's name.
    local_image="$default_registry/dreamfusion-$k:$version"
    if [ "$image" != "$local_image" ] && ! run inspect --type image "$image" >/dev/null 2>&1; then
      run tag "$local_image" "$image"
    fi
    echo "pushing $image ($engine)"
    run push "$image"
    continue
  fi
  args=(-f "images/$k/Dockerfile" -t "$image")
  if [ -n "${BASE:-}" ]; then
    args+=(--build-arg "BASE=$BASE")
    # A base made locally (images/debian-base.sh) is in no registry: never try to pull it.
    case "$BASE" in localhost/*) [ "$engine" = docker ] || args+=(--pull=never) ;; esac
  fi
  [ -n "${TORCH_INDEX+set}" ] && args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
  [ -n "${TARGET:-}" ] && args+=(--target "$TARGET")
  for a in CUDA_ARCHITECTURES MAX_JOBS; do [ -n "${!a:-}" ] && args+=(--build-arg "$a=${!a}"); done
  [ -n "${PIP_CA:-}" ] && args+=(--secret "id=pip-ca,src=$PIP_CA")
  if [ -n "${WHEELS:-}" ]; then
    [ "$engine" = docker ] && { echo "error: WHEELS needs podman or buildah (docker build mounts no folders)" >&2; exit 2; }
    args+=(-v "$(cd "$WHEELS" && pwd):/wheels:ro")
  fi
  if [ -n "${SOURCES:-}" ]; then
    [ "$engine" = docker ] && { echo "error: SOURCES needs podman or buildah (docker build mounts no folders)" >&2; exit 2; }
    args+=(-v "$(cd "$SOURCES" && pwd):/third_party:ro")
  fi
  # The image this build replaces under the same tag: removed afterwards, or every rebuild leaves a
  # dangling copy (about 2 GB for the cpu image, 6 for the gpu one; with the vfs driver, all of it on disk).
  previous=$(run images -q --no-trunc "$image" 2>/dev/null | head -n 1 || true)
  case "$engine" in
    docker) DOCKER_BUILDKIT=1 docker build "${args[@]}" . ;;
    # Docker's image format, as docker builds: it keeps SHELL and HEALTHCHECK, which OCI's drops.
    podman) podman build --format docker --layers="${LAYERS:-true}" "${args[@]}" . ;;
    buildah) "${buildah[@]}" bud --format docker --layers="${LAYERS:-true}" --isolation "${BUILDAH_ISOLATION:-chroot}" "${args[@]}" . ;;
    *) echo "error: ENGINE must be docker, podman or buildah, not '$engine'" >&2; exit 2 ;;
  esac
  echo "built $image ($engine)"
  # Only when no name is left on it: an image tagged elsewhere too is the user's to keep.
  dangling=$(run images -q --no-trunc --filter dangling=true 2>/dev/null || true)  # whole, then searched: no SIGPIPE
  if [ -n "$previous" ] && grep -qx "$previous" <<<"$dangling"; then
    if run rmi "$previous" >/dev/null 2>&1; then echo "removed the image it replaces (${previous:0:19})"
    else echo "kept the image it replaces (${previous:0:19}): the engine refused (a container or image uses it)"; fi
  fi
done
