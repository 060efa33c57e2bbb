#!/usr/bin/env bash
# Builds the two images of the deployment with no registry at hand: statically linked
# release binaries, each copied alone into a FROM-scratch image.
#   lb-server:latest    the replica (server/Dockerfile)
#   lb-balancer:latest  the balancer (load_balancer/Dockerfile)
# An image whose binary did not change is not rebuilt (FORCE=1 rebuilds anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
CARGO=${CARGO:-cargo}
out=${CARGO_TARGET_DIR:-target}/$TARGET/release

# crt-static links glibc into the binary: scratch has no libc to load. --target keeps
# the flag off build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  "$CARGO" build --release --target "$TARGET" -p server -p load_balancer

for b in server load_balancer; do
  desc=$(file -L "$out/$b")
  if ! grep -Eq 'statically linked|static-pie linked' <<<"$desc"; then
    echo "error: $out/$b is not statically linked: $desc" >&2
    exit 1
  fi
  echo "static: $desc"
done

# build IMAGE BINARY DOCKERFILE
build() {
  local image=$1 bin=$2 dockerfile=$3
  local sum
  sum=$(sha256sum "$out/$bin" | cut -d' ' -f1)
  # The binary's hash is stored as a label: same hash, same image, nothing to do.
  if [[ -z ${FORCE:-} ]] &&
    [[ $(docker image inspect -f '{{ index .Config.Labels "lb.binary-sha256" }}' "$image" 2>/dev/null) == "$sum" ]]; then
    echo "$image is up to date"
    return
  fi
  local ctx
  ctx=$(mktemp -d)
  # A context of just the binary and the Dockerfile: sending target/ would copy gigabytes.
  cp "$out/$bin" "$ctx/$bin"
  # Symbols are of no use in the image and are most of its size.
  if command -v strip >/dev/null; then strip "$ctx/$bin"; fi
  cp "$dockerfile" "$ctx/Dockerfile"
  if ! docker build -q --label "lb.binary-sha256=$sum" -t "$image" "$ctx" >/dev/null; then
    rm -rf "$ctx"
    echo "error: docker build of $image failed" >&2
    exit 1
  fi
  rm -rf "$ctx"
  echo "built $image"
}

build lb-server:latest server server/Dockerfile
build lb-balancer:latest load_balancer load_balancer/Dockerfile

docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' |
  awk 'NR == 1 || /^lb-(server|balancer):latest/'
