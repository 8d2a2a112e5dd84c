#!/usr/bin/env bash
# run-local.sh [DIR]: the README's first command.  Installs what is needed (scripts/setup.sh),
# builds (build/), and runs a 3-node relayd cluster on loopback behind HAProxy, in the foreground,
# with everything a relay needs to do its job locally:
#
#   node1..node3   relayd on 127.0.20.11-13: SMTP :2525, cluster :7401 (Raft, mutual TLS with
#                  certificates from scripts/make-cluster-certs.sh), HTTP :8025 (/healthz,
#                  /readyz, /metrics), admin :7402 (relayctl)
#   HAProxy        127.0.0.1:2525 -> the three nodes' SMTP, PROXY protocol v2 from 127.0.20.1
#                  (the nodes' proxy_from), health check GET /readyz on each node's :8025;
#                  statistics page on http://127.0.20.1:8404/
#   dnsmasq        127.0.20.53:53, the nodes' only DNS: demo.example MX 10 mx.demo.example
#                  (127.0.20.25); no upstream, so other domains fail temporarily (deferred)
#   smtp-sink      127.0.20.25:25, the MX of demo.example: appends every message it receives
#                  to DIR/sink/mail.log
#
# DIR (default: a new /tmp/relayd-demo.XXXXXX) holds the configs, data dirs, certificates and
# logs; it is kept after the demo stops (a second run on the same DIR resumes the cluster).
# Once every node is ready and HAProxy accepts, it prints how to send mail and watch it.
# Ctrl-C or SIGTERM stops everything it started (SIGTERM, then SIGKILL after STOP_SECONDS);
# so does any of them exiting on its own.  (Started with `&` from a non-interactive shell it
# ignores SIGINT, as every background job of such a shell does: stop it with SIGTERM then.)
#
# Environment: RELAYD (and RELAYCTL) name the binaries to run instead of building build/ (the
# integration test sets them to the build under test); STOP_SECONDS (default 20).
# Needs root: dnsmasq binds port 53 and smtp-sink port 25.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
if (($# > 1)); then
  echo "usage: bash scripts/run-local.sh [DIR]" >&2
  exit 2
fi
if [[ $(id -u) != 0 ]]; then
  echo "run-local.sh: needs root (dnsmasq listens on port 53, smtp-sink on port 25)" >&2
  exit 2
fi

NODES=(node1 node2 node3)
ADDRS=(127.0.20.11 127.0.20.12 127.0.20.13)
SMTP_PORT=2525 CLUSTER_PORT=7401 HTTP_PORT=8025 ADMIN_PORT=7402
LB=127.0.0.1:2525 LB_SRC=127.0.20.1 LB_STATS=127.0.20.1:8404
DNS=127.0.20.53 SINK=127.0.20.25
DOMAIN=demo.example
READY_SECONDS=90      # bound on the wait for the cluster to elect a leader and HAProxy to listen
STOP_SECONDS=${STOP_SECONDS:-20}

# Refuse to start over another demo (or anything else) on the front address.
if (exec 3<>"/dev/tcp/${LB%:*}/${LB#*:}") 2>/dev/null; then
  echo "run-local.sh: $LB is already in use (another demo still running?)" >&2
  exit 1
fi

bash scripts/setup.sh
if [[ -n ${RELAYD:-} ]]; then
  relayd=$RELAYD
  relayctl=${RELAYCTL:-$(dirname "$RELAYD")/relayctl}
else
  bash scripts/build.sh "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  relayd=$top/build/node/relayd
  relayctl=$top/build/node/relayctl
fi
for b in "$relayd" "$relayctl"; do
  [[ -x $b ]] || { echo "run-local.sh: $b is not an executable" >&2; exit 1; }
done

if (($# == 1)); then
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
else
  dir=$(mktemp -d /tmp/relayd-demo.XXXXXX)
fi
echo "demo: data in $dir"
mkdir -p "$dir/sink"
[[ -f $dir/certs/ca.crt ]] || bash scripts/make-cluster-certs.sh "$dir/certs" "${#NODES[@]}" >/dev/null

peers=
for i in "${!NODES[@]}"; do
  peers+="${peers:+, }${NODES[i]}=${ADDRS[i]}:$CLUSTER_PORT"
done
for i in "${!NODES[@]}"; do
  n=${NODES[i]} a=${ADDRS[i]}
  cat >"$dir/$n.conf" <<CONF
# $n of the run-local.sh demo (written at every start)
node_id = $n
hostname = $n.relay.local
data_dir = $dir/$n
smtp_listen = $a:$SMTP_PORT
http_listen = $a:$HTTP_PORT
admin_listen = $a:$ADMIN_PORT
# relayctl's certificates come from their own CA: one of the cluster CA could speak Raft
admin_ca = $dir/certs/admin-ca.crt
cluster_listen = $a:$CLUSTER_PORT
peers = $peers
cluster_ca = $dir/certs/ca.crt
cluster_cert = $dir/certs/$n.crt
cluster_key = $dir/certs/$n.key
# HAProxy's source address: its connections start with a PROXY v2 header naming the client
proxy_from = $LB_SRC/32
# trusted clients (as named by HAProxy) may relay anywhere; anyone may send to $DOMAIN
mynetworks = 127.0.0.0/8
relay_domains = $DOMAIN
dns_servers = $DNS:53
retry_base = 10s
retry_max = 2m
shutdown_timeout = 5s
CONF
done

cat >"$dir/haproxy.cfg" <<CFG
# HAProxy in front of the run-local.sh demo (written at every start)
global
    maxconn 1000
    # no SO_REUSEPORT: a second listener on the front address fails instead of sharing it
    noreuseport
    log stdout format raw local0 info
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    timeout check 2s
    retries 2
    option redispatch
frontend smtp
    bind $LB
    default_backend relayd
backend relayd
    balance roundrobin
    # A node is in rotation while GET /readyz on its http_listen answers 200: it serves SMTP,
    # knows a leader and has applied what was committed.
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    source $LB_SRC
    default-server send-proxy-v2 check port $HTTP_PORT inter 1s fall 2 rise 2
$(for i in "${!NODES[@]}"; do printf '    server %s %s:%s\n' "${NODES[i]}" "${ADDRS[i]}" "$SMTP_PORT"; done)
frontend stats
    mode http
    bind $LB_STATS
    stats enable
    stats uri /
    stats refresh 2s
CFG

# ---- processes: every one is a direct child, in pids/names/logs ----
pids=() names=() logs=()
stopping=0

alive() { # pid: running (not exited, not a zombie)
  local line
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  line=${line##*) }
  [[ ${line%% *} != Z ]]
}

stop_all() {
  ((stopping)) && return 0
  stopping=1
  trap '' INT TERM # a second Ctrl-C does not cut the cleanup short
  local i deadline=$((SECONDS + STOP_SECONDS)) left
  for i in "${!pids[@]}"; do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  while :; do
    left=0
    for i in "${!pids[@]}"; do alive "${pids[i]}" && left=1; done
    ((left && SECONDS < deadline)) || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if alive "${pids[i]}"; then
      echo "demo: ${names[i]} (pid ${pids[i]}) still running after ${STOP_SECONDS}s: SIGKILL" >&2
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  echo "demo: stopped; data, logs and the sink's mail are kept in $dir"
}
trap 'stop_all' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name log command...: run command in the background, output to log
  local name=$1 log=$2
  shift 2
  "$@" >>"$log" 2>&1 </dev/null &
  pids+=($!) names+=("$name") logs+=("$log")
}

check_alive() { # every started process still runs, else report it and fail
  local i
  for i in "${!pids[@]}"; do
    if ! alive "${pids[i]}"; then
      echo "demo: ${names[i]} exited early; the end of ${logs[i]}:" >&2
      tail -n 15 "${logs[i]}" >&2 || true
      exit 1
    fi
  done
}

wait_until() { # what command...: poll command until it succeeds, within READY_SECONDS
  local what=$1 deadline=$((SECONDS + READY_SECONDS))
  shift
  until "$@"; do
    check_alive
    if ((SECONDS >= deadline)); then
      echo "demo: $what not within ${READY_SECONDS}s" >&2
      exit 1
    fi
    sleep 0.2
  done
}

ready() { curl -fsS -o /dev/null --max-time 1 "http://$1:$HTTP_PORT/readyz" 2>/dev/null; }
accepts() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

start dnsmasq "$dir/dnsmasq.log" dnsmasq --no-daemon --no-resolv --no-hosts \
  --conf-file=/dev/null --user=root --listen-address=$DNS --port=53 --bind-interfaces \
  --log-queries --log-facility=- \
  --mx-host=$DOMAIN,mx.$DOMAIN,10 --host-record=mx.$DOMAIN,$SINK
start smtp-sink "$dir/sink/smtp-sink.log" smtp-sink -u root -h mx.$DOMAIN \
  -D "$dir/sink/mail.log" $SINK:25 100
for i in "${!NODES[@]}"; do
  start "${NODES[i]}" "$dir/${NODES[i]}.log" "$relayd" --config "$dir/${NODES[i]}.conf"
done
echo "demo: waiting for the three nodes to elect a leader (GET /readyz)"
for i in "${!NODES[@]}"; do
  wait_until "${NODES[i]} ready (see $dir/${NODES[i]}.log)" ready "${ADDRS[i]}"
done
start haproxy "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
wait_until "HAProxy listening on $LB (see $dir/haproxy.log)" accepts "$LB"

ctl=$relayctl
[[ $ctl == "$top"/* ]] && ctl=${ctl#"$top"/}
cat <<INFO

relayd demo: 3 nodes behind HAProxy, all ready.  Ctrl-C stops everything.
  data:     $dir  (nodeN.conf, nodeN/ data, nodeN.log, certs/, haproxy.cfg, dnsmasq.log)
  nodes:    ${NODES[0]} ${ADDRS[0]}, ${NODES[1]} ${ADDRS[1]}, ${NODES[2]} ${ADDRS[2]}: SMTP :$SMTP_PORT, cluster :$CLUSTER_PORT (TLS),
            HTTP :$HTTP_PORT (/healthz /readyz /metrics), admin :$ADMIN_PORT (relayctl)
  HAProxy:  $LB -> the nodes (PROXY v2 from $LB_SRC, health GET /readyz); stats http://$LB_STATS/
  DNS:      dnsmasq on $DNS:53: $DOMAIN MX 10 mx.$DOMAIN ($SINK)
  sink:     smtp-sink on $SINK:25 (mx.$DOMAIN)
  sink log: $dir/sink/mail.log

Send a message through HAProxy:
  swaks --server ${LB%:*} --port ${LB#*:} --from you@example.org --to someone@$DOMAIN

Watch it (members, leader and queue: member health is the leader's view, so ask the node named
as leader for it; what the sink received; the nodes' logs; metrics):
  $ctl --config $dir/node1.conf status
  (--config: node1's unix socket $dir/node1/admin.sock; the admin port is mutual TLS with the
  admin CA: --server ADDR:$ADMIN_PORT --ca $dir/certs/ca.crt --cert $dir/certs/admin.crt
  --key $dir/certs/admin.key)
  tail -f $dir/sink/mail.log
  tail -f $dir/node1.log $dir/node2.log $dir/node3.log
  curl -s http://${ADDRS[0]}:$HTTP_PORT/metrics | grep '^relay_'
INFO

# Run until a signal (trap above) or until a process dies on its own.
while :; do
  wait -n || true
  ((stopping)) && break
  for i in "${!pids[@]}"; do
    if ! alive "${pids[i]}"; then
      echo "demo: ${names[i]} exited unexpectedly; the end of ${logs[i]}:" >&2
      tail -n 15 "${logs[i]}" >&2 || true
      exit 1
    fi
  done
done
