#!/usr/bin/env bash
# Builds the images and runs the deployment: the balancer on localhost:5000 with its
# replicas as containers on network lbnet. Waits until the replicas serve.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/compose.sh"
N=${LB_REPLICAS:-3}
URL=http://localhost:5000

bash "$ROOT/scripts/images.sh"
compose up -d

deadline=$((SECONDS + 60))
until [[ $(curl -s "$URL/rep" 2>/dev/null | grep -o '"N": *[0-9]*' | grep -o '[0-9]*$') == "$N" ]] &&
  curl -sf "$URL/home" >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    echo "error: the balancer did not list $N serving replicas within 60 s; its logs:" >&2
    compose logs --tail 100 balancer >&2 || true
    exit 1
  fi
  sleep 0.5
done

echo
echo "Up: the balancer serves $URL with $N replicas."
curl -s "$URL/rep"
echo
cat <<MSG

Try:
  curl -s $URL/home                 # forwarded; see X-Served-By with curl -i
  curl -s $URL/status               # replicas, their state and addresses
  curl -s -X POST $URL/add -d '{"n": 2, "hostnames": ["S5"]}'
  curl -s -X DELETE $URL/rm -d '{"n": 1, "hostnames": ["S5"]}'
  docker kill Server2               # replaced within a second or two
  make logs                         # follow the balancer and the replicas
  make stop                         # remove everything
MSG
