#!/usr/bin/env bash
# run-local.sh: the README's first command.  Installs what is needed, builds, and runs one relay
# node on 127.0.0.1:2525 in the foreground with its data in .demo/node1.  Ctrl-C stops it.
# (The operations issue turns this into the 3-node demo behind HAProxy.)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/setup.sh
bash scripts/build.sh "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
demo="$top/.demo"
mkdir -p "$demo"
cat >"$demo/node1.conf" <<CONF
# demo node: trusted clients on loopback may relay anywhere
node_id = node1
hostname = node1.relay.local
data_dir = $demo/node1
smtp_listen = 127.0.0.1:2525
mynetworks = 127.0.0.0/8
relay_domains = demo.example
CONF
echo "relayd demo node"
echo "  config:   $demo/node1.conf"
echo "  data dir: $demo/node1"
echo "  log:      this terminal (stderr)"
echo "  try:      swaks --server 127.0.0.1 --port 2525 --to you@demo.example"
echo "  queue:    build/node/relayd --config $demo/node1.conf --dump-queue"
echo "  stop:     Ctrl-C"
exec "$top/build/node/relayd" --config "$demo/node1.conf"
