#!/usr/bin/env bash
# Removes the deployment: the balancer, every replica container it started (by
# label; the balancer leaves them running when it stops), and the network.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/compose.sh"
INSTANCE=${LB_INSTANCE:-load_balancer}
NETWORK=${LB_NETWORK:-lbnet}

# The network may still hold replicas: compose's own removal of it can fail here.
compose down --remove-orphans 2>&1 | grep -v 'error while removing network' || true
ids=$(docker ps -aq --filter "label=lb.managed-by=$INSTANCE")
if [[ -n $ids ]]; then
  # shellcheck disable=SC2086
  docker rm -f $ids >/dev/null
  echo "removed $(wc -w <<<"$ids") replica containers"
fi
if docker network inspect "$NETWORK" >/dev/null 2>&1; then
  docker network rm "$NETWORK" >/dev/null && echo "removed network $NETWORK"
fi
