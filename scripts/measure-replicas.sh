#!/usr/bin/env bash
# Measures Borscht behind nginx on this machine: 1, 2 and 3 replicas of `borscht serve`
# (release build, demo model) behind nginx configured by deploy/nginx/, loaded through it
# by `borscht loadtest`; with --kill, the first replica is SIGKILLed a few seconds into the
# load (its clients' requests are sent again to the others).
#
#   cargo build --release -p borscht
#   scripts/measure-replicas.sh [--clients 12] [--requests 20] [--n 8] [--kill] [1 2 3]
#
# Prints one JSON line (`borscht loadtest`'s report) per replica count.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bin="$REPO_ROOT/target/release/borscht"
clients=12 requests=20 captions=8 kill=false counts=()
while (($#)); do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --n) captions="$2"; shift 2 ;;
    --kill) kill=true; shift ;;
    *) counts+=("$1"); shift ;;
  esac
done
((${#counts[@]})) || counts=(1 2 3)
[ -x "$bin" ] || { echo "build it first: cargo build --release -p borscht" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
# SIGTERM first: nginx's master then stops its workers (SIGKILL would leave them serving).
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # URL: until it answers 200, at most a minute
  for _ in $(seq 600); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

for n in "${counts[@]}"; do
  replicas=()
  for _ in $(seq "$n"); do
    port="$(free_port)"
    "$bin" serve --addr "127.0.0.1:$port" --model "$REPO_ROOT/models/demo" --web-dir "$work" \
      --client-ip-header X-Real-IP 2>"$work/replica-$port.log" &
    pids+=("$!") replicas+=("$port")
  done
  for port in "${replicas[@]}"; do wait_for "http://127.0.0.1:$port/readyz"; done

  # The committed configuration, with this run's ports and files.
  lb="$(free_port)"
  { echo "upstream borscht {"; echo "    least_conn;"
    for port in "${replicas[@]}"; do echo "    server 127.0.0.1:$port max_fails=3 fail_timeout=2s;"; done
    echo "    keepalive 32;"; echo "}"; } >"$work/upstream.conf"
  grep -q "server 127.0.0.1:8081 max_fails=3 fail_timeout=2s;" "$REPO_ROOT/deploy/nginx/upstream.conf"
  sed "s/listen 8080;/listen 127.0.0.1:$lb;/" "$REPO_ROOT/deploy/nginx/borscht.conf" >"$work/borscht.conf"
  user=""; [ "$(id -u)" -ne 0 ] || user="user root;"
  cat >"$work/nginx.conf" <<CONF
$user
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  include $work/upstream.conf;
  include $work/borscht.conf;
}
CONF
  nginx -p "$work" -e "$work/nginx-error.log" -c "$work/nginx.conf" &
  pids+=("$!")
  wait_for "http://127.0.0.1:$lb/healthz"

  if $kill; then
    (sleep 3; kill -9 "${pids[0]}") &
  fi
  "$bin" loadtest --url "ws://127.0.0.1:$lb/ws" --image "$REPO_ROOT/data/demo/images/twemoji/1f355-0.png" \
    --clients "$clients" --requests "$requests" --n "$captions" |
    python3 -c "import json, sys; r = json.load(sys.stdin); r.pop('server_memory_mib'); print(json.dumps({'replicas': $n, **r}))"
  stop_all
done
