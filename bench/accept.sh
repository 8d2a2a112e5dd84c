#!/usr/bin/env bash
# bench/accept.sh: acceptance rate of one relayd next to Postfix, in one run of
# ../shared/bench/postfix-baseline.sh (smtp-source -> relay; smtp-sink as the destination).
#
#   bash bench/accept.sh            # 4 KiB x 5000 messages at 10 and 50 sessions, 3 reps
#
# relayd keeps its fsync before every 250 (group commit).  Until delivery lands (issue 3) relayd
# only queues, so read the accept/s column; its e2e column stays empty ("stalled").
# Env: PORT (relayd, default 2527), SINK (default 2626), BASELINE (path of postfix-baseline.sh),
# WORKLOADS/CONCS/REPS passed through to the baseline script.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BASELINE=${BASELINE:-$top/../shared/bench/postfix-baseline.sh}
PORT=${PORT:-2527}
SINK=${SINK:-2626}
export WORKLOADS=${WORKLOADS:-"4096:5000"}
export CONCS=${CONCS:-"10 50"}
export REPS=${REPS:-3}
export STALL_S=${STALL_S:-3}

[[ -x $top/build/node/relayd ]] || bash "$top/scripts/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
work=$(mktemp -d /tmp/relayd-bench.XXXXXX)
"$top/build/node/relayd" --node-id=bench1 --hostname=bench1.relay.test --data-dir="$work/data" \
  --smtp-listen=127.0.0.1:"$PORT" --mynetworks=127.0.0.0/8 --max-connections-per-client=1000 \
  --dns-servers=127.0.0.1:9 --log-level=warn 2>"$work/relayd.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do ss -ltn "sport = :$PORT" | grep -q LISTEN && break; sleep 0.1; done
ss -ltn "sport = :$PORT" | grep -q LISTEN || { cat "$work/relayd.log"; exit 1; }
bash "$BASELINE" --also "relayd:$PORT:$SINK:$pid"
