#!/usr/bin/env bash
# bench/e2e.sh: end-to-end relay rate of one relayd next to Postfix, in one run of
# ../shared/bench/postfix-baseline.sh (smtp-source -> relay -> smtp-sink).
#
#   bash bench/e2e.sh          # 4 KiB x 5000 and 100 KiB x 1000 messages at 50 sessions, 3 reps
#
# relayd accepts (fsync before every 250, group commit), then delivers: the benchmark's recipient
# domain is routed to the baseline's smtp-sink with `transport = dst.perfbase.test=127.0.0.1:SINK`
# (no DNS), as Postfix is with `relayhost = [127.0.0.1]:SINK`.  Read the e2e/s column: messages
# divided by the time until smtp-sink counted them all.  The baseline script clears
# RELAY_IDLE_CMD for --also relays, so runs are separated only by its SETTLE_S pause.
# Env: RELAYD (binary, default build/node/relayd), PORT (relayd, default 2528), SINK (default
# 2626), DEST_CONC (max_connections_per_destination, default 20 = Postfix's
# default_destination_concurrency_limit), BASELINE, and WORKLOADS/CONCS/REPS passed through.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BASELINE=${BASELINE:-$top/../shared/bench/postfix-baseline.sh}
RELAYD=${RELAYD:-$top/build/node/relayd}
PORT=${PORT:-2528}
SINK=${SINK:-2626}
DEST_CONC=${DEST_CONC:-20}
export WORKLOADS=${WORKLOADS:-"4096:5000 102400:1000"}
export CONCS=${CONCS:-"50"}
export REPS=${REPS:-3}
export SINK_PORT=$SINK

[[ -x $RELAYD ]] || { bash "$top/scripts/build.sh" "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo; RELAYD=$top/build/node/relayd; }
work=$(mktemp -d /tmp/relayd-e2e.XXXXXX)
"$RELAYD" --node-id=bench1 --hostname=bench1.relay.test --data-dir="$work/data" \
  --smtp-listen=127.0.0.1:"$PORT" --mynetworks=127.0.0.0/8 --max-connections-per-client=1000 \
  --transport=dst.perfbase.test=127.0.0.1:"$SINK" --dns-servers=127.0.0.1:53 \
  --max-connections-per-destination="$DEST_CONC" --max-deliveries=100 \
  --max-messages-per-connection=1000 --retry-base=1s --retry-max=5s \
  ${DKIM_KEYS:+--dkim-keys="$DKIM_KEYS"} --log-level=warn 2>"$work/relayd.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do ss -ltn "sport = :$PORT" | grep -q LISTEN && break; sleep 0.1; done
ss -ltn "sport = :$PORT" | grep -q LISTEN || { cat "$work/relayd.log"; exit 1; }
bash "$BASELINE" --also "relayd:$PORT:$SINK:$pid"
echo "# relayd: $RELAYD, max_connections_per_destination=$DEST_CONC; its log:"
tail -5 "$work/relayd.log" | sed 's/^/#   /'
