#!/usr/bin/env bash
# Cloudflare's pingora (0.9, pingora-proxy with no TLS) beside nginx as
# keep-alive reverse proxies to the same upstream (an nginx with one worker
# answering a 100-byte body): wrk -t2 -c50, rounds interleaved; requests/s,
# p99 and the proxy's CPU per request from /proc (nginx: master + workers).
# Both proxies run 2 threads/workers and set X-Forwarded-For/-Proto.
#
# Needs wrk, nginx and cmake (pingora's zlib-ng): apt-get install -y wrk nginx cmake
# Run: bash bench/pingora/run.sh   (ROUNDS=3 SECS=5 by default)
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet
D=$(mktemp -d); ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}
body=$(head -c 100 /dev/zero | tr '\0' 'x')
for d in up px; do mkdir -p $D/$d; done
cat > $D/up/nginx.conf <<C
daemon off; worker_processes 1; pid $D/up/pid; error_log $D/up/err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $D/up; proxy_temp_path $D/up; fastcgi_temp_path $D/up; uwsgi_temp_path $D/up; scgi_temp_path $D/up;
  server { listen 127.0.0.1:18080; location / { return 200 "$body"; } } }
C
cat > $D/px/nginx.conf <<C
daemon off; worker_processes 2; pid $D/px/pid; error_log $D/px/err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $D/px; proxy_temp_path $D/px; fastcgi_temp_path $D/px; uwsgi_temp_path $D/px; scgi_temp_path $D/px;
  upstream bench { server 127.0.0.1:18080; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18081; location / { proxy_pass http://bench; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Host \$http_host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; } } }
C
nginx -p $D/up -c $D/up/nginx.conf & UP=$!
nginx -p $D/px -c $D/px/nginx.conf & PX=$!
./target/release/slipway-pingora-bench 127.0.0.1:18082 127.0.0.1:18080 2 > $D/ping.log 2>&1 & PG=$!
trap 'kill $UP $PX $PG 2>/dev/null; sleep 0.5; pkill -f "$D" 2>/dev/null || true' EXIT
sleep 1
cpu() { # total utime+stime ticks of a process and its children (nginx workers)
  local t=0; for p in $1 $(pgrep -P $1); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
tick=$(getconf CLK_TCK)
for r in $(seq $ROUNDS); do
  for side in nginx:18081:$PX pingora:18082:$PG; do
    IFS=: read name port pid <<< "$side"
    c0=$(cpu $pid)
    out=$(wrk --latency -t2 -c50 -d${SECS}s -H 'Host: bench.localhost' http://127.0.0.1:$port/)
    c1=$(cpu $pid)
    echo "$out" | grep -i "non-2xx\|socket errors" || true
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}'); reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    echo "round $r $name req/s $rps p99 $p99 cpu/req $(awk -v c=$((c1-c0)) -v n=$reqs -v t=$tick 'BEGIN {printf "%.1f us", c/t/n*1e6}')"
  done
done
