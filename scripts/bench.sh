#!/usr/bin/env bash
# Side-by-side throughput and latency: this balancer, nginx and HAProxy in front of the
# same three backends, each proxy with one worker, the same key (?id= random per request).
#
#   scripts/bench.sh                 # 3 alternating rounds of 6 s each
#   ROUNDS=5 DURATION=10 CONNS=50 scripts/bench.sh
#
# Only loopback traffic; every wrk run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
CONNS=${CONNS:-50}
BASE_PORT=${BASE_PORT:-18080}
OUT=${OUT:-target/bench}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build --release -p load_balancer -p server >&2
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
B1=$((BASE_PORT + 1)) B2=$((BASE_PORT + 2)) B3=$((BASE_PORT + 3))
P_NGINX=$((BASE_PORT + 10)) P_HAPROXY=$((BASE_PORT + 11)) P_LB=$((BASE_PORT + 12)) P_LB_ALL=$((BASE_PORT + 13))

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# One nginx process serves the three backends: a fixed JSON body on every path.
cat >"$OUT/backends.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/backends.pid;
error_log $OUT/backends.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location / { default_type application/json; return 200 '{"message":"Hello from Server: Server1","status":"successful"}'; } }
  server { listen 127.0.0.1:$B2; location / { default_type application/json; return 200 '{"message":"Hello from Server: Server2","status":"successful"}'; } }
  server { listen 127.0.0.1:$B3; location / { default_type application/json; return 200 '{"message":"Hello from Server: Server3","status":"successful"}'; } }
}
EOF
cat >"$OUT/proxy-nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/proxy-nginx.pid;
error_log $OUT/proxy-nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backends {
    hash \$arg_id consistent;
    server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat >"$OUT/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  balance url_param id
  hash-type consistent
  server s1 127.0.0.1:$B1
  server s2 127.0.0.1:$B2
  server s3 127.0.0.1:$B3
EOF
cat >"$OUT/random-id.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/home?id=" .. math.random(100000, 999999))
end
EOF

"$NGINX" -c "$OUT/backends.conf" -p "$OUT" & pids+=($!)
"$NGINX" -c "$OUT/proxy-nginx.conf" -p "$OUT" & pids+=($!); pid_nginx=$!
"$HAPROXY" -f "$OUT/haproxy.cfg" -q & pids+=($!); pid_haproxy=$!
backends=(--backend "Server1=127.0.0.1:$B1" --backend "Server2=127.0.0.1:$B2" --backend "Server3=127.0.0.1:$B3")
RUST_LOG=warn ./target/release/load_balancer --runtime static "${backends[@]}" \
  --hash-key query:id --workers 1 --listen "127.0.0.1:$P_LB" >/dev/null & pids+=($!); pid_lb=$!
RUST_LOG=warn ./target/release/load_balancer --runtime static "${backends[@]}" \
  --hash-key query:id --listen "127.0.0.1:$P_LB_ALL" >/dev/null & pids+=($!); pid_lb_all=$!

# CPU time (user + system, in clock ticks) of a process and its children: what a
# proxy spends per request is its efficiency, steadier than req/s on a shared machine.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

for port in $B1 $P_NGINX $P_HAPROXY $P_LB $P_LB_ALL; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/home?id=1" >/dev/null && break; sleep 0.1; done
done

targets=("direct:$B1:" "nginx:$P_NGINX:$pid_nginx" "haproxy:$P_HAPROXY:$pid_haproxy"
  "load_balancer:$P_LB:$pid_lb" "load_balancer(all-workers):$P_LB_ALL:$pid_lb_all")
TICK=$(getconf CLK_TCK)
# Idle + iowait ticks of the whole machine: a proxy that leaves cores idle while the
# load waits on it loses requests/s that its CPU per request does not show.
idle_ticks() { awk '/^cpu /{print $5 + $6}' /proc/stat; }
# Ticks the machine spent working (user, nice, system, irq, softirq; not steal).
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
: >"$OUT/runs.txt"
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    IFS=: read -r name port pid <<<"$t"
    echo "round $round/$ROUNDS: $name" >&2
    before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    idle_before=$(idle_ticks) busy_before=$(busy_ticks)
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$OUT/random-id.lua" "http://127.0.0.1:$port/")
    after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
    idle_after=$(idle_ticks) busy_after=$(busy_ticks)
    printf '=== %s\ncpu_seconds: %s\nidle_cores: %s\nbusy_seconds: %s\n%s\n' "$name" \
      "$(awk "BEGIN {print ($after - $before) / $TICK}")" \
      "$(awk "BEGIN {print ($idle_after - $idle_before) / $TICK / $DURATION}")" \
      "$(awk "BEGIN {print ($busy_after - $busy_before) / $TICK}")" "$out" >>"$OUT/runs.txt"
  done
done

python3 - "$OUT/runs.txt" "$(nproc)" <<'EOF'
import re, statistics, sys
cores = int(sys.argv[2])
runs = {}
for block in open(sys.argv[1]).read().split("=== ")[1:]:
    name, _, body = block.partition("\n")
    def ms(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", body, re.M)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", body).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", body))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", body)
    errors += int(m.group(1)) if m else 0
    total = int(re.search(r"(\d+) requests in", body).group(1))
    cpu = float(re.search(r"cpu_seconds: ([\d.]+)", body).group(1))
    idle = float(re.search(r"idle_cores: ([\d.]+)", body).group(1))
    busy = float(re.search(r"busy_seconds: ([\d.]+)", body).group(1))
    runs.setdefault(name, []).append((rps, ms("50"), ms("99"), errors, cpu * 1e6 / total, idle,
                                      busy * 1e6 / total))
med = {n: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
           statistics.median(r[2] for r in v), sum(r[3] for r in v),
           statistics.median(r[4] for r in v), statistics.median(r[5] for r in v),
           # Everything the machine spent per request (wrk, backend, proxy, kernel):
           # with the cores shared, requests/s can reach at most cores / this.
           statistics.median(r[6] for r in v))
       for n, v in runs.items()}
peer = max(("nginx", "haproxy"), key=lambda n: med[n][0])
# The machine drifts within a run; a ratio taken inside each round, against the better
# peer of that round, cancels the drift that the medians of whole columns keep.
best = [max(a[0], b[0]) for a, b in zip(runs["nginx"], runs["haproxy"])]
paired = {n: statistics.median(r[0] / b for r, b in zip(v, best)) for n, v in runs.items()}
print(f"\nmedian of {len(runs['nginx'])} rounds on {cores} cores; better peer: {peer}\n")
print(f"| target | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req | machine CPU µs/req | idle cores "
      f"| req/s ÷ {peer} | req/s ÷ better peer of each round | p99 ÷ {peer} |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for n, (rps, p50, p99, err, cpu, idle, machine) in med.items():
    cpu_text = f"{cpu:.1f}" if cpu > 0 else "–"
    print(f"| {n} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {err} | {cpu_text} | {machine:.1f} | {idle:.2f} "
          f"| {rps / med[peer][0]:.2f} | {paired[n]:.2f} | {p99 / med[peer][2]:.2f} |")
ceiling = {n: cores * 1e6 / med[n][6] for n in ("nginx", "haproxy", "load_balancer")}
print(f"\nreq/s with no core ever idle (cores ÷ machine CPU per request): "
      + ", ".join(f"{n} {c:,.0f}" for n, c in ceiling.items())
      + f"; load_balancer ÷ better peer {ceiling['load_balancer'] / max(ceiling['nginx'], ceiling['haproxy']):.2f}")
EOF
