#!/usr/bin/env bash
# Put tiny-cuda-nn (with its cutlass and fmt submodules) and nvdiffrast at pinned commits under
# /build, for images/gpu/Dockerfile's builder. Sources come from /third_party when the build
# mounts clones there (SOURCES= in images/build.sh: builds with no GitHub access), else from GitHub.
# Every checkout, submodules included, must be at the pinned commit, or the build stops.
set -euo pipefail
tcnn_commit=$1 nvdiffrast_commit=$2
mkdir -p /build

get() {  # name url commit
  if [ -d "/third_party/$1" ]; then
    cp -a "/third_party/$1" "/build/$1"
  else
    git clone --quiet "$2" "/build/$1"
    git -C "/build/$1" checkout --quiet "$3"
  fi
  local head
  head=$(git -C "/build/$1" rev-parse HEAD)
  [ "$head" = "$3" ] || { echo "error: $1 is at $head, not the pinned $3" >&2; exit 1; }
}

get tiny-cuda-nn https://github.com/NVlabs/tiny-cuda-nn.git "$tcnn_commit"
get nvdiffrast https://github.com/NVlabs/nvdiffrast.git "$nvdiffrast_commit"

# The torch bindings need cutlass and fmt (cmrc only serves tiny-cuda-nn's own CMake build).
cd /build/tiny-cuda-nn
for sub in dependencies/cutlass dependencies/fmt; do
  want=$(git ls-tree HEAD "$sub" | awk '{print $3}')
  [ -e "$sub/.git" ] || git submodule update --quiet --init "$sub"
  got=$(git -C "$sub" rev-parse HEAD)
  [ "$got" = "$want" ] || { echo "error: $sub is at $got, not the pinned $want" >&2; exit 1; }
done
echo "third-party sources: tiny-cuda-nn $tcnn_commit, nvdiffrast $nvdiffrast_commit"
