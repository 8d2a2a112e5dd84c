#!/usr/bin/env bash
# bench/diskwrites.sh: disk bytes written per relayed message (issue 14, target 4: <= 1.5x the
# message size on a single node and on each node of a cluster).
#
#   bash bench/diskwrites.sh                 # single node, then 3 nodes; 20,000 x 4 KiB
#   MODES=cluster N=50000 bash bench/diskwrites.sh
#   DEFER_S=120 bash bench/diskwrites.sh     # a deferred backlog: the destination is down
#                                            # until DEFER_S seconds after the last message
#   DEFER_S=120 DEFER_HOW=4xx bash bench/diskwrites.sh  # ... or answers RCPT with 450
#
# Each relayd runs under a small wrapper that reaps it with wait4(2) and records ru_oublock (the
# kernel's count of 512-byte blocks the process and all its threads sent to storage: the WAL,
# flushes, compactions, blob files, the MANIFEST and RocksDB's own log, over the node's whole
# life, its shutdown flush included).  smtp-source sends N messages of SIZE bytes in SESSIONS
# parallel sessions; relayd delivers them to smtp-sink (`transport`, no DNS); once every node's
# queue is empty the nodes get SIGTERM and the wrapper reports.  bytes/msg divides by N; the
# ratio is to one message as smtp-source sends it (its headers and CRLFs around SIZE bytes of
# body, measured through a second smtp-sink), and to SIZE.  In the cluster smtp-source talks
# to the leader.
# With DEFER_S > 0 the messages first stay queued until DEFER_S seconds after smtp-source is
# done: no sink listens (DEFER_HOW=down, a receiver that is down: the destination's backoff
# defers its whole backlog at once) or smtp-sink answers RCPT with 450 (DEFER_HOW=4xx, smtp-sink
# -r rcpt: every recipient deferred by its own Outcome at each retry).  Retries come every
# 1-5 s (--retry-base/--retry-max below, far more often than the defaults) and RocksDB flushes
# the queue meanwhile, so bodies go to blob files; then a sink that accepts takes over.  The
# count covers the deferrals and the later delivery.
# Env: RELAYD, N (20000), SIZE (4096), SESSIONS (50), MODES ("single cluster"), PORT (2561),
# SINK (2661), CLUSTER_TLS (1), DEFER_S (0), KEEP=1 (keep the data dirs and logs).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
RELAYD=${RELAYD:-$top/build/node/relayd}
N=${N:-20000}
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-50}
MODES=${MODES:-"single cluster"}
PORT=${PORT:-2561}
SINK=${SINK:-2661}
CLUSTER_TLS=${CLUSTER_TLS:-1}
KEEP=${KEEP:-0}
DEFER_S=${DEFER_S:-0}
DEFER_HOW=${DEFER_HOW:-down}
[[ $DEFER_HOW == down || $DEFER_HOW == 4xx ]] || { echo "DEFER_HOW: down or 4xx" >&2; exit 2; }
[[ -x $RELAYD ]] || { bash "$top/scripts/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo; RELAYD=$top/build/node/relayd; }
command -v smtp-source >/dev/null || PATH=$PATH:/usr/sbin
work=$(mktemp -d /tmp/relayd-diskwrites.XXXXXX)
declare -a pids
sinkpid=
cleanup() {
  for p in "${pids[@]:-}" $sinkpid; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ $KEEP == 1 ]]; then echo "# kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# run_reaped OUT CMD...: runs CMD, forwards SIGTERM to it, writes its ru_oublock * 512 to OUT
run_reaped() {
  local out=$1; shift
  /usr/bin/python3 - "$out" "$@" <<'PY' &
import os, signal, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: p.send_signal(signal.SIGTERM))
while True:
    try:
        _, status, ru = os.wait4(p.pid, 0)
        break
    except InterruptedError:
        continue
with open(sys.argv[1], "w") as f:
    f.write("%d %d\n" % (ru.ru_oublock * 512, status))
PY
}

# the size of one message as smtp-source sends it (its headers, CRLF line ends), from a copy
# that a second smtp-sink dumps: the ratio is to this (and to SIZE, the body alone)
mkdir -p "$work/probe"
smtp-sink -u root -d "$work/probe/msg.%M%S" 127.0.0.1:$((SINK + 1)) 10 >/dev/null 2>&1 &
probepid=$!
for _ in $(seq 100); do ss -ltn "sport = :$((SINK + 1))" | grep -q LISTEN && break; sleep 0.05; done
smtp-source -s 1 -m 1 -l "$SIZE" -f s@src.perfbase.test -t r@dst.perfbase.test 127.0.0.1:$((SINK + 1))
for _ in $(seq 100); do compgen -G "$work/probe/msg.*" >/dev/null && break; sleep 0.05; done
kill $probepid 2>/dev/null || true
MSG=$(/usr/bin/python3 - "$work"/probe/msg.* <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
m = d[d.index(b"From: "):]  # what smtp-sink adds comes first (X-* and its Received:)
print(len(m) + m.count(b"\n") - m.count(b"\r\n"))
PY
)
echo "# one message as sent: $MSG bytes (SIZE $SIZE of body)"
start_sink() { # [down | smtp-sink options]: the destination, on SINK
  [[ -n $sinkpid ]] && { kill "$sinkpid" 2>/dev/null || true; wait "$sinkpid" 2>/dev/null || true; }
  sinkpid=
  [[ ${1:-} == down ]] && return 0
  smtp-sink -u root "$@" 127.0.0.1:"$SINK" 1000 >/dev/null 2>&1 &
  sinkpid=$!
}
start_sink
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k {print $2}'; }
wait_listen() { for _ in $(seq 200); do ss -ltn "sport = :$1" | grep -q LISTEN && return 0; sleep 0.05; done; return 1; }

common=(--mynetworks=127.0.0.0/8 --max-connections-per-client=1000
  --transport=dst.perfbase.test=127.0.0.1:"$SINK" --dns-servers=127.0.0.1:53
  --max-connections-per-destination=20 --max-deliveries=100 --max-messages-per-connection=1000
  --retry-base=1s --retry-max=5s --log-level=warn)

run_mode() { # single|cluster
  local mode=$1 nodes=1 i http
  pids=()
  local peers="" certs="$work/certs"
  if [[ $mode == cluster ]]; then
    nodes=3
    peers="d1=127.0.0.1:7461,d2=127.0.0.1:7462,d3=127.0.0.1:7463"
    [[ $CLUSTER_TLS == 1 && ! -d $certs ]] && bash "$top/scripts/make-cluster-certs.sh" "$certs" d1 d2 d3 >/dev/null
  fi
  for i in $(seq $nodes); do
    local args=(--node-id=d$i --hostname=d$i.relay.test --data-dir="$work/$mode/d$i"
      --smtp-listen=127.0.0.1:$((PORT + i - 1)) --http-listen=127.0.0.1:$((8460 + i)) "${common[@]}")
    if [[ $mode == cluster ]]; then
      args+=(--cluster-listen=127.0.0.1:$((7460 + i)) --peers="$peers")
      [[ $CLUSTER_TLS == 1 ]] && args+=(--cluster-ca="$certs/ca.crt" --cluster-cert="$certs/d$i.crt" --cluster-key="$certs/d$i.key")
    fi
    mkdir -p "$work/$mode"
    run_reaped "$work/$mode/d$i.io" "$RELAYD" "${args[@]}" 2>>"$work/$mode/d$i.log"
    pids[$i]=$!
  done
  for i in $(seq $nodes); do wait_listen $((PORT + i - 1)) || { tail "$work/$mode"/*.log; exit 1; }; done
  local target=1
  if [[ $mode == cluster ]]; then
    target=0
    for _ in $(seq 200); do
      for i in 1 2 3; do [[ "$(metric $((8460 + i)) relay_raft_is_leader)" == 1 ]] && target=$i; done
      (( target )) && break; sleep 0.1
    done
    (( target )) || { tail "$work/$mode"/*.log; exit 1; }
  fi
  local t0=$SECONDS
  if (( DEFER_S > 0 )); then
    if [[ $DEFER_HOW == down ]]; then start_sink down; else start_sink -r rcpt; fi
  fi
  smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f s@src.perfbase.test -t r@dst.perfbase.test \
    127.0.0.1:$((PORT + target - 1))
  if (( DEFER_S > 0 )); then # a benchmark phase of fixed length, not a wait for a condition
    sleep "$DEFER_S"
    local dq; dq=$(metric $((8460 + target)) relay_queue_messages)
    echo "# $mode: $N messages deferred ($DEFER_HOW) for $DEFER_S s after the last one (${dq%.*} queued at the end)"
    start_sink
  fi
  # every node's queue empty (deadline: 10 minutes)
  local deadline=$((SECONDS + 600)) left
  while :; do
    left=0
    for i in $(seq $nodes); do
      local q; q=$(metric $((8460 + i)) relay_queue_messages); left=$((left + ${q%.*}))
    done
    (( left == 0 )) && break
    (( SECONDS < deadline )) || { echo "queue not empty after 600 s: $left" >&2; exit 1; }
    sleep 0.2
  done
  local accepted; accepted=$(metric $((8460 + target)) relay_messages_accepted_total)
  for i in $(seq $nodes); do kill -TERM "${pids[$i]}"; done
  for i in $(seq $nodes); do wait "${pids[$i]}" || true; done
  echo "# $mode: $N x $SIZE B in $SESSIONS sessions to d$target, accepted ${accepted%.*}, all delivered in $((SECONDS - t0)) s (deferred first: ${DEFER_S} s, $DEFER_HOW)"
  for i in $(seq $nodes); do
    local bytes status; read -r bytes status < "$work/$mode/d$i.io"
    local du; du=$(du -sb "$work/$mode/d$i" | cut -f1)
    awk -v m="$mode" -v i="$i" -v b="$bytes" -v n="$N" -v s="$SIZE" -v msg="$MSG" -v du="$du" 'BEGIN {
      printf "%s d%d: %.1f MiB written, %.0f B/msg, %.2f x the message (%.2f x SIZE; data dir at exit %.1f MiB)\n",
        m, i, b / 1048576, b / n, b / n / msg, b / n / s, du / 1048576 }'
  done
}
for m in $MODES; do run_mode "$m"; done
