#!/usr/bin/env bash
# Builds the images and runs the deployment: the balancer on localhost:$LB_PORT
# (default 5000) with its replicas as containers on network lbnet. Waits until the
# replicas serve. Stops at once, before building anything, when that port is taken by
# something other than this deployment.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/compose.sh"
N=${LB_REPLICAS:-3}
PORT=${LB_PORT:-5000}
export LB_PORT=$PORT # docker-compose.yml publishes the balancer on it
URL=http://localhost:$PORT

# port_user PORT: who holds PORT on this host (empty if no one; "unknown" when
# something does but cannot be named).
port_user() {
  local line container
  # A container publishing it (with or without a docker-proxy process to show for it).
  container=$(docker ps --format '{{.Names}} {{.Ports}}' 2>/dev/null |
    awk -v p=":$1->" 'index($0, p) && !found { print $1; found = 1 }')
  if [[ -n $container ]]; then
    echo "container $container"
  elif command -v ss >/dev/null; then
    line=$(ss -ltnpH "sport = :$1" 2>/dev/null | awk 'NR == 1')
    [[ -n $line ]] || return 0
    if [[ $line =~ users:\(\(\"([^\"]+)\",pid=([0-9]+) ]]; then
      echo "${BASH_REMATCH[1]}, pid ${BASH_REMATCH[2]}"
    else
      echo unknown
    fi
  elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo unknown
  fi
}

# Our own deployment already on the port is fine: `compose up` leaves it running.
ours=$(docker port lb-balancer 5000/tcp 2>/dev/null || true)
if ! grep -q ":$PORT\$" <<<"$ours"; then
  user=$(port_user "$PORT")
  if [[ -n $user ]]; then
    by=""
    [[ $user != unknown ]] && by=" (by $user)"
    echo "error: port $PORT is already in use$by; pick another with LB_PORT=$((PORT + 1)) make run" >&2
    exit 1
  fi
fi

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
