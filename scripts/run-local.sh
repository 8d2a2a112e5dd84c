#!/usr/bin/env bash
# run-local.sh: the README's first command.  Installs what is needed, builds, and runs one relay
# node on 127.0.0.1:2525 in the foreground, with its data in .demo/node1, plus the two peers a
# relay needs to do its job locally:
#   dnsmasq on 127.0.0.53:5353  the only DNS the node uses: demo.example MX -> mx.demo.example
#                               (127.0.0.54); it has no upstream, so other names fail
#                               temporarily and such mail is deferred, then bounced
#   smtp-sink on 127.0.0.54:25  the destination MX; every delivered message is a file in
#                               .demo/sink/
# Ctrl-C stops all three.  (The operations issue turns this into the 3-node demo behind HAProxy.)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh
bash scripts/build.sh "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
demo="$top/.demo"
mkdir -p "$demo/sink"
cat >"$demo/node1.conf" <<CONF
# demo node: trusted clients on loopback may relay anywhere
node_id = node1
hostname = node1.relay.local
data_dir = $demo/node1
smtp_listen = 127.0.0.1:2525
http_listen = 127.0.0.1:8025
mynetworks = 127.0.0.0/8
relay_domains = demo.example
dns_servers = 127.0.0.53:5353
retry_base = 10s
CONF

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dnsmasq --no-daemon --no-resolv --no-hosts --conf-file=/dev/null --user=root \
  --listen-address=127.0.0.53 --port=5353 --bind-interfaces --log-facility="$demo/dnsmasq.log" \
  --mx-host=demo.example,mx.demo.example,10 --host-record=mx.demo.example,127.0.0.54 &
pids+=($!)
smtp-sink -u root -d "$demo/sink/%Y%m%d/%H%M%S." 127.0.0.54:25 100 2>"$demo/sink.log" &
pids+=($!)

cat <<INFO
relayd demo node (Ctrl-C stops everything below)
  config:   $demo/node1.conf
  data dir: $demo/node1
  log:      this terminal (stderr)
  DNS:      dnsmasq on 127.0.0.53:5353 (demo.example MX -> 127.0.0.54)
  sink:     smtp-sink on 127.0.0.54:25; delivered mail lands in $demo/sink/
  send:     swaks --server 127.0.0.1 --port 2525 --to you@demo.example
  queue:    build/node/relayd --config $demo/node1.conf --dump-queue
  metrics:  curl -s http://127.0.0.1:8025/metrics
INFO
"$top/build/node/relayd" --config "$demo/node1.conf" &
pids+=($!)
wait "${pids[-1]}"
