#!/usr/bin/env bash
# Follows the balancer's logs and every replica's, each line prefixed with its name.
# Replicas started later (respawns, /add) are picked up too. Ctrl-C ends it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/compose.sh"
INSTANCE=${LB_INSTANCE:-load_balancer}

declare -A following=()
cleanup() {
  trap - INT TERM EXIT
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

compose logs -f --tail 20 &

# follow NAME ID: one replica's logs, prefixed, until the container is gone.
follow() {
  docker logs -f --tail 20 "$2" 2>&1 | sed -u "s/^/$1 | /"
}

while true; do
  while read -r id name; do
    [[ -n $id && -z ${following[$id]:-} ]] || continue
    following[$id]=1
    follow "$name" "$id" &
  done < <(docker ps --no-trunc --filter "label=lb.managed-by=$INSTANCE" --format '{{.ID}} {{.Names}}')
  sleep 2
done
