#!/usr/bin/env bash
# bench/backlog.sh: issue 14 targets 1-3 - a node with a million queued messages (memory, accept
# rate with the backlog's retries due, restart), next to Postfix with a deferred backlog.
#
#   bash bench/backlog.sh                    # every phase, N=1000000 (fill is resumable)
#   N=200000 bash bench/backlog.sh fill memory restart accept
#   PF_N=100000 bash bench/backlog.sh postfix
#
# Everything runs on loopback.  The bench starts its own dnsmasq on 127.0.250.1:53 that answers
# REFUSED for everything (relayd's dns_servers point there; the machine's resolver is never
# used), so mail to rcpt@never.test stays queued: every attempt fails at the DNS step (a
# temporary error) and the domain's retries come due every retry_base..retry_max (30-60 s).
#
# Phases (arguments; default all, in this order):
#   fill     queue N messages of SIZE bytes (smtp-source, CONC sessions) in $DIR/data-N, kept
#            between runs: a rerun tops it up to N (resumable)
#   memory   RSS of relayd with the N messages (after a restart: no transient arenas of the
#            fill), and of an empty relayd; per-message cost = difference / N
#   restart  SIGTERM, start again: time to the first "220" and to the first delivery of a new
#            message to a live destination (smtp-sink, routed by `transport`)
#   accept   accept rate of ACCEPT_MSGS new messages (to never.test) with the backlog (its
#            retries due) against a fresh empty relayd, alternating REPS times; the ratio
#   dump     relayd --dump-queue of the N messages: time and peak RSS (streamed)
#   postfix  Postfix 3.7 with a deferred backlog of PF_N messages (relayhost a closed port,
#            retries every 30-60 s) against an empty Postfix: accept rates and their ratio
#            (uses ../shared/bench/postfix-baseline.sh's Postfix setup; needs root)
#
# Env: N (1000000), SIZE (1024), CONC (50), ACCEPT_MSGS (20000), REPS (3), PF_N (100000),
# DIR (/var/tmp/relayd-backlog: data dirs and results), RELAYD (build/node/relayd), PORT (2530),
# HPORT (8530), SINK (2631), BASELINE.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-1000000}
SIZE=${SIZE:-1024}
CONC=${CONC:-50}
ACCEPT_MSGS=${ACCEPT_MSGS:-20000}
REPS=${REPS:-3}
PF_N=${PF_N:-100000}
DIR=${DIR:-/var/tmp/relayd-backlog}
RELAYD=${RELAYD:-$top/build/node/relayd}
PORT=${PORT:-2530}
HPORT=${HPORT:-8530}
SINK=${SINK:-2631}
DNS=127.0.250.1
BASELINE=${BASELINE:-$top/../shared/bench/postfix-baseline.sh}
DATA=$DIR/data-$N
RES=$DIR/results-$(date +%Y%m%d-%H%M%S)
mkdir -p "$DIR" "$RES"
SMTP_SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
out() { printf '%s\n' "$*" | tee -a "$RES/summary.txt"; }
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dns_start() {
    dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=$DNS --bind-interfaces \
        --port=53 --log-facility="$RES/dnsmasq.log" &
    PIDS+=($!)
    sleep 0.3
}

sink_start() {
    "$SMTP_SINK" -u postfix -c "127.0.0.1:$SINK" 1000 >"$RES/sink.out" 2>"$RES/sink.err" &
    PIDS+=($!)
    SINK_PID=$!
    sleep 0.3
}
sink_count() { tr '\r' '\n' <"$RES/sink.out" | awk -F'mesg=' '/mesg=/ { n = $2 } END { print n + 0 }'; }

# relayd_start <data dir> <log>: starts relayd, sets RELAYD_PID and T_START (ms)
relayd_start() {
    T_START=$(now_ms)
    "$RELAYD" --node-id=backlog1 --hostname=backlog1.relay.test --data-dir="$1" \
        --smtp-listen=127.0.0.1:$PORT --http-listen=127.0.0.1:$HPORT --mynetworks=127.0.0.0/8 \
        --max-connections-per-client=1000 --dns-servers=$DNS:53 \
        --transport=live.test=127.0.0.1:$SINK --retry-base=30s --retry-max=60s \
        --log-level=info 2>>"$2" &
    RELAYD_PID=$!
    PIDS+=($RELAYD_PID)
}
relayd_stop() {
    kill -TERM "$RELAYD_PID" 2>/dev/null
    wait "$RELAYD_PID" 2>/dev/null
}

# ms from T_START until 127.0.0.1:PORT answers a 220 greeting (bounded: 120 s)
wait_220() {
    python3 - "$PORT" "$T_START" <<'EOF'
import socket, sys, time
port, t0 = int(sys.argv[1]), int(sys.argv[2]) / 1000.0
end = time.time() + 120
while time.time() < end:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        if s.recv(64).startswith(b"220"):
            print(int((time.time() - t0) * 1000)); sys.exit(0)
    except OSError:
        pass
    time.sleep(0.005)
print(-1); sys.exit(1)
EOF
}

metric() { curl -s "http://127.0.0.1:$HPORT/metrics" | awk -v m="$1" '$1 == m { print $2; exit }'; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }

# send <n> <rcpt> <sessions>: prints the accept rate (msg/s)
send() {
    local t0 t1
    t0=$(now_ms)
    timeout 3600 "$SMTP_SOURCE" -s "$3" -m "$1" -l "$SIZE" -M client.backlog.test \
        -f sender@src.backlog.test -t "$2" "127.0.0.1:$PORT" >>"$RES/source.log" 2>&1
    t1=$(now_ms)
    awk -v n="$1" -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f\n", n * 1000 / (ms ? ms : 1) }'
}

phase_fill() {
    relayd_start "$DATA" "$RES/relayd-fill.log"
    wait_220 >/dev/null || { log "relayd did not start"; return 1; }
    local have; have=$(metric relay_queue_messages)
    log "fill: $have of $N queued in $DATA"
    local t0; t0=$(now_ms)
    while ((have < N)); do
        local chunk=$((N - have)); ((chunk > 100000)) && chunk=100000
        local rate; rate=$(send "$chunk" rcpt@never.test "$CONC")
        have=$(metric relay_queue_messages)
        log "fill: +$chunk at $rate msg/s -> $have queued, RSS $(rss_kb $RELAYD_PID) kB"
    done
    out "fill: $have messages of $SIZE bytes queued; $(( ($(now_ms) - t0) / 1000 )) s this run; RSS $(rss_kb $RELAYD_PID) kB (peak $(hwm_kb $RELAYD_PID) kB); data dir $(du -sh "$DATA" | cut -f1)"
    relayd_stop
}

phase_memory() {
    local empty=$RES/data-empty
    rm -rf "$empty"
    relayd_start "$empty" "$RES/relayd-empty.log"
    wait_220 >/dev/null
    sleep 2
    local e; e=$(rss_kb $RELAYD_PID)
    relayd_stop
    relayd_start "$DATA" "$RES/relayd-memory.log"
    wait_220 >/dev/null
    local n; n=$(metric relay_queue_messages)
    sleep 5
    local f; f=$(rss_kb $RELAYD_PID)
    out "memory: empty relayd RSS $e kB; with $n queued $f kB ($((f / 1024)) MiB, peak $(( $(hwm_kb $RELAYD_PID) / 1024 )) MiB); $(( (f - e) * 1024 / (n ? n : 1) )) bytes per queued message"
    relayd_stop
}

phase_restart() {
    sink_start
    relayd_start "$DATA" "$RES/relayd-restart.log"
    local t220; t220=$(wait_220)
    local n; n=$(metric relay_queue_messages)
    # a new message to a live destination: delivered while the backlog is there
    local c0; c0=$(sink_count)
    local ts; ts=$(now_ms)
    send 100 rcpt@live.test 10 >/dev/null
    local deadline=$(( $(now_ms) + 60000 ))
    while (( $(sink_count) < c0 + 100 && $(now_ms) < deadline )); do sleep 0.05; done
    local td=$(( $(now_ms) - ts ))
    out "restart: with $n queued, the first 220 $t220 ms after start; 100 new messages to a live destination delivered $td ms after they were sent ($(( $(sink_count) - c0 ))/100)"
    relayd_stop
    kill "$SINK_PID" 2>/dev/null
}

# cpu_ms <pid>: user+system CPU of the process so far
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"; }

# accept_run <label>: ACCEPT_MSGS new messages into the running relayd; prints
# "rate cpu_ms_per_msg suspended deferrals outcomes" and logs them
accept_run() {
    local c0 s0 d0 o0 rate c1
    c0=$(cpu_ms "$RELAYD_PID")
    s0=$(metric relay_delivery_jobs_suspended_total); d0=$(metric relay_delivery_domain_deferrals_proposed_total)
    o0=$(curl -s "http://127.0.0.1:$HPORT/metrics" | awk '/^relay_delivery_recipients_total/ { n += $2 } END { print n + 0 }')
    rate=$(send "$ACCEPT_MSGS" rcpt@never.test "$CONC")
    c1=$(cpu_ms "$RELAYD_PID")
    local s1 d1 o1
    s1=$(metric relay_delivery_jobs_suspended_total); d1=$(metric relay_delivery_domain_deferrals_proposed_total)
    o1=$(curl -s "http://127.0.0.1:$HPORT/metrics" | awk '/^relay_delivery_recipients_total/ { n += $2 } END { print n + 0 }')
    echo "$rate $(awk -v c=$((c1 - c0)) -v n="$ACCEPT_MSGS" 'BEGIN { printf "%.3f", c / n }') $((s1 - s0)) $((d1 - d0)) $((o1 - o0))"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

phase_accept() {
    local empty=$RES/data-accept-empty rep e b re=() rb=() ce=() cb=()
    for ((rep = 1; rep <= REPS; rep++)); do
        rm -rf "$empty"
        relayd_start "$empty" "$RES/relayd-accept-empty.log"
        wait_220 >/dev/null
        e=($(accept_run))
        relayd_stop
        relayd_start "$DATA" "$RES/relayd-accept-backlog.log"
        wait_220 >/dev/null
        sleep 2 # the backlog's retries are due (every 30-60 s): the first round starts
        b=($(accept_run))
        log "accept rep $rep: empty ${e[0]} msg/s ${e[1]} ms CPU/msg; backlog of $(metric relay_queue_messages): ${b[0]} msg/s ${b[1]} ms CPU/msg, meanwhile ${b[2]} jobs suspended by ${b[3]} DeferDomain, ${b[4]} recipient outcomes"
        relayd_stop
        re+=("${e[0]}"); rb+=("${b[0]}"); ce+=("${e[1]}"); cb+=("${b[1]}")
    done
    local me mb mce mcb
    me=$(printf '%s\n' "${re[@]}" | median); mb=$(printf '%s\n' "${rb[@]}" | median)
    mce=$(printf '%s\n' "${ce[@]}" | median); mcb=$(printf '%s\n' "${cb[@]}" | median)
    out "accept: $ACCEPT_MSGS messages of $SIZE bytes, $CONC sessions, median of $REPS: empty queue $me msg/s (${re[*]}), $mce ms CPU/msg; with the backlog $mb msg/s (${rb[*]}), $mcb ms CPU/msg: rate ratio $(awk -v a="$mb" -v b="$me" 'BEGIN { printf "%.2f", a / b }'), CPU ratio $(awk -v a="$mcb" -v b="$mce" 'BEGIN { printf "%.2f", a / b }')"
}

phase_dump() {
    local t0; t0=$(now_ms)
    /usr/bin/time -f '%M' -o "$RES/dump.time" "$RELAYD" --data-dir="$DATA" --dump-queue \
        >"$RES/dump.out" 2>"$RES/dump.err"
    out "dump: $(wc -l <"$RES/dump.out") lines in $(( $(now_ms) - t0 )) ms, peak RSS $(( $(cat "$RES/dump.time") / 1024 )) MiB"
    rm -f "$RES/dump.out"
}

phase_postfix() {
    [[ $(id -u) == 0 ]] || { log "postfix: needs root"; return 1; }
    # the baseline library: its Postfix configuration, then ours on top
    # (plain assignments: a prefix to `source` would last only while it runs, not for the
    # library's functions called after it)
    RESULTS_DIR=$RES/postfix WORKDIR=$RES/postfix RELAY_PORT=$PORT SINK_PORT=9
    source "$BASELINE"
    find_tools
    postfix_configure "$PORT" 9
    postconf -e minimal_backoff_time=30s maximal_backoff_time=60s queue_run_delay=30s \
        "relayhost=[127.0.0.1]:9"
    postfix_start
    local pf_have
    pf_have=$(find /var/spool/postfix/{deferred,active,incoming} -type f | wc -l)
    local t0; t0=$(now_ms)
    log "postfix: filling $PF_N deferred messages"
    rate_fill=$(send "$PF_N" rcpt@never.test "$CONC")
    out "postfix: filled $PF_N in $(( ($(now_ms) - t0) / 1000 )) s ($rate_fill msg/s)"
    local rep rates_b=() rates_e=()
    for ((rep = 1; rep <= REPS; rep++)); do
        rates_b+=($(send "$ACCEPT_MSGS" rcpt@never.test "$CONC"))
        log "postfix backlog rep $rep: ${rates_b[-1]} msg/s ($(find /var/spool/postfix/deferred -type f | wc -l) deferred)"
    done
    postfix_stop
    postsuper -d ALL >/dev/null 2>&1
    postfix_start
    for ((rep = 1; rep <= REPS; rep++)); do
        rates_e+=($(send "$ACCEPT_MSGS" rcpt@never.test "$CONC"))
        postfix_stop; postsuper -d ALL >/dev/null 2>&1; postfix_start
    done
    postfix_stop
    postsuper -d ALL >/dev/null 2>&1
    local me mb
    me=$(printf '%s\n' "${rates_e[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    mb=$(printf '%s\n' "${rates_b[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    out "postfix: $ACCEPT_MSGS messages, median of $REPS: empty queue $me msg/s (${rates_e[*]}), with a deferred backlog of $PF_N $mb msg/s (${rates_b[*]}): ratio $(awk -v a="$mb" -v b="$me" 'BEGIN { printf "%.2f", a / b }')"
    cleanup
}

phases=("$@")
((${#phases[@]})) || phases=(fill memory restart accept dump postfix)
[[ -x $RELAYD ]] || { log "no $RELAYD: bash scripts/build.sh build"; exit 1; }
dns_start
out "# bench/backlog.sh $(date -u +%FT%TZ): N=$N SIZE=$SIZE CONC=$CONC relayd=$RELAYD ($(git -C "$top" rev-parse --short HEAD)); $(nproc) cpus"
for p in "${phases[@]}"; do
    log "== $p"
    "phase_$p"
done
out "# results in $RES"
