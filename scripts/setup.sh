#!/usr/bin/env bash
# Installs what the build and tests need and a fresh machine may lack (Debian
# packages; only what is missing, so running it again costs nothing). `make run`,
# `make test` and the other build targets run it first.
set -euo pipefail
need=()
command -v docker >/dev/null || need+=(docker.io)
command -v file >/dev/null || need+=(file)
command -v curl >/dev/null || need+=(curl)
# The differential smuggling test runs a Node backend (tests/backends/echo.js).
command -v node >/dev/null || need+=(nodejs)
# gRPC code is generated from proto/loadbalancer.proto (and etcd-client's own protos).
command -v protoc >/dev/null || need+=(protobuf-compiler)
# The etcd discovery tests start a real etcd on loopback.
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need+=(etcd-server)
# The dashboard's browser tests drive a headless Chromium through chromedriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if ((${#need[@]})); then
  sudo=()
  if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null; then
      sudo=(sudo)
    else
      echo "error: missing ${need[*]}: install these Debian packages (as root), then run make again" >&2
      exit 1
    fi
  fi
  echo "installing ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt || true
