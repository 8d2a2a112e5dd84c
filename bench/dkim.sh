#!/usr/bin/env bash
# bench/dkim.sh: end-to-end relay rate with DKIM signing (issue 13 part 3), relayd next to
# Postfix in one run, with ../shared/bench/postfix-baseline.sh as a library (smtp-source ->
# relay -> smtp-sink, same workloads, same sink).
#
#   bash bench/dkim.sh         # 4 KiB x 5000 and 100 KiB x 1000 at 50 sessions, REPS=3
#
# Relays measured, one after the other:
#   postfix            Postfix as bench/e2e.sh runs it (no signing)
#   postfix+opendkim   the usual pairing: Postfix with OpenDKIM as its milter (smtpd_milters),
#                      signing every message with an RSA-2048 key, relaxed/relaxed, From
#                      oversigned (OpenDKIM's CPU is added to Postfix's in the table)
#   relayd             no signing (bench/e2e.sh's configuration)
#   relayd-rsa2048     dkim_keys with an RSA-2048 key for the sender's domain
#   relayd-ed25519     dkim_keys with an Ed25519 key
# The sender's From: domain (smtp-source writes From: <sender@src.perfbase.test>) has the key,
# so every message is signed once on acceptance.  A sample signed message of each signer is
# checked with dkimverify against the public key before the runs (a benchmark of signatures
# nobody can verify would prove nothing).
# Env: RELAYD (default build/node/relayd), PORT (relayd, 2528), SINK (2626), DEST_CONC (20),
# BASELINE, WORKLOADS/CONCS/REPS passed through, TOTAL_BUDGET_S (per relay, default 420).
set -uo pipefail   # no -e: the baseline library is written for -u only
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
export TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-2400}
DOMAIN=src.perfbase.test
MILTER=127.0.0.1:8891

[[ -x $RELAYD ]] || { bash "$top/scripts/build.sh" "$top/build"; RELAYD=$top/build/node/relayd; }
# shellcheck source=/dev/null
source "$BASELINE"
work=$(mktemp -d /tmp/relayd-dkim.XXXXXX)
chmod 711 "$work"   # smtp-sink runs as nobody and writes the samples below it
RELAYD_PID= ODKIM_PID=
bench_cleanup() {
    [[ -n $RELAYD_PID ]] && { kill "$RELAYD_PID" 2>/dev/null; wait "$RELAYD_PID" 2>/dev/null; }
    [[ -n $ODKIM_PID ]] && { kill "$ODKIM_PID" 2>/dev/null; wait "$ODKIM_PID" 2>/dev/null; }
    cleanup
    rm -rf "$work"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
[[ $(id -u) == 0 ]] || die "run as root"
mkdir -p "$RESULTS_DIR"
install_tools
find_tools
ver=$(versions)
log "$ver"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl genpkey -algorithm ED25519 -out "$work/ed.pem" 2>/dev/null
chmod 600 "$work"/*.pem

# A signed sample must verify: dkimverify with the key given directly (no DNS: dkimpy's
# dnsfunc), one message per signer.
verify_sample() {   # <label> <file> <pem> <k>
    /usr/bin/python3 - "$2" "$3" "$4" <<'PY' || die "$1: the sample signature does not verify"
import base64, subprocess, sys, dkim
msg = open(sys.argv[1], "rb").read()
der = subprocess.run(["openssl", "pkey", "-in", sys.argv[2], "-pubout", "-outform", "DER"],
                     check=True, capture_output=True).stdout
p = base64.b64encode(der[-32:] if sys.argv[3] == "ed25519" else der).decode()
txt = ("v=DKIM1; k=%s; p=%s" % (sys.argv[3], p)).encode()
ok = dkim.verify(msg, dnsfunc=lambda name, timeout=5: txt)
print("sample verified" if ok else "sample FAILED")
sys.exit(0 if ok else 1)
PY
}

sample() {   # <port> <out file>: one message through the relay to a dumping smtp-sink
    local d=$work/sample.$RANDOM
    mkdir -p "$d"; chmod 777 "$d"
    "$SMTP_SINK" -u nobody -d "$d/%M" 127.0.0.1:"$SINK" 10 &
    local sp=$!
    for _ in $(seq 50); do ss -ltn "sport = :$SINK" | grep -q LISTEN && break; fsleep 0.1; done
    "$SMTP_SOURCE" -m 1 -l 200 -M client.perfbase.test -f sender@$DOMAIN -t rcpt@dst.perfbase.test \
        127.0.0.1:"$1" >/dev/null
    for _ in $(seq 100); do [[ -n $(find "$d" -type f) ]] && break; fsleep 0.1; done
    kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null || true
    local f; f=$(find "$d" -type f | head -1)
    [[ -n $f ]] || die "no sample reached the sink"
    # smtp-sink prepends X-* fields and its Received:; the signed message follows
    sed -e '/^X-[A-Za-z-]*: /d' "$f" | sed -e 's/$/\r/' >"$2"
}

start_relayd() {   # <label> [dkim_keys]
    local data=$work/data-$1
    "$RELAYD" --node-id=bench1 --hostname=bench1.relay.test --data-dir="$data" \
      --smtp-listen=127.0.0.1:"$PORT" --mynetworks=127.0.0.0/8 --max-connections-per-client=1000 \
      --transport=dst.perfbase.test=127.0.0.1:"$SINK" --dns-servers=127.0.0.1:53 \
      --max-connections-per-destination="$DEST_CONC" --max-deliveries=100 \
      --max-messages-per-connection=1000 --retry-base=1s --retry-max=5s \
      ${2:+--dkim-keys="$2"} --log-level=warn 2>"$work/relayd-$1.log" &
    RELAYD_PID=$!
    for _ in $(seq 100); do ss -ltn "sport = :$PORT" | grep -q LISTEN && break; fsleep 0.1; done
    ss -ltn "sport = :$PORT" | grep -q LISTEN || { cat "$work/relayd-$1.log"; die "relayd $1 did not start"; }
}

stop_relayd() {
    kill "$RELAYD_PID"; wait "$RELAYD_PID" 2>/dev/null || true; RELAYD_PID=
}

# 1) Postfix alone
postfix_configure "$RELAY_PORT" "$SINK_PORT"
postfix_start
postfix_smoke
RELAY_PID=$PF_MASTER_PID RELAY_IDLE_CMD=pf_queue_empty measure_relay "$RELAY_PORT" "$SINK_PORT" postfix
postfix_stop

# 2) Postfix + OpenDKIM (milter), signing with the same RSA-2048 key
cat >"$work/opendkim.conf" <<CONF
Mode                s
Domain              $DOMAIN
Selector            bench
KeyFile             $work/rsa.pem
Canonicalization    relaxed/relaxed
OversignHeaders     From
Socket              inet:${MILTER#*:}@${MILTER%:*}
Syslog              no
Background          no
UserID              root
RequireSafeKeys     no
CONF
opendkim -f -x "$work/opendkim.conf" 2>"$work/opendkim.log" &
ODKIM_PID=$!
for _ in $(seq 50); do ss -ltn "sport = :${MILTER#*:}" | grep -q LISTEN && break; fsleep 0.1; done
ss -ltn "sport = :${MILTER#*:}" | grep -q LISTEN || { cat "$work/opendkim.log"; die "opendkim did not start"; }
postfix_configure "$RELAY_PORT" "$SINK_PORT"
postconf -e "smtpd_milters = inet:$MILTER" "milter_default_action = tempfail" \
    "milter_protocol = 6"
postfix_start
sample "$RELAY_PORT" "$work/sample-opendkim.eml"
verify_sample postfix+opendkim "$work/sample-opendkim.eml" "$work/rsa.pem" rsa
od0=$(tree_ticks "$ODKIM_PID")
RELAY_PID=$PF_MASTER_PID RELAY_IDLE_CMD=pf_queue_empty measure_relay "$RELAY_PORT" "$SINK_PORT" postfix+opendkim
od1=$(tree_ticks "$ODKIM_PID")
postfix_stop
kill "$ODKIM_PID"; wait "$ODKIM_PID" 2>/dev/null || true; ODKIM_PID=
ODKIM_NOTE="OpenDKIM used $(( (od1 - od0) * 1000 / $(getconf CLK_TCK) )) ms of CPU over all postfix+opendkim runs (not in the table's CPU column)"

# 3) relayd: unsigned, RSA-2048, Ed25519
start_relayd plain
RELAY_PID=$RELAYD_PID RELAY_IDLE_CMD= measure_relay "$PORT" "$SINK" relayd
stop_relayd
start_relayd rsa "$DOMAIN:bench:$work/rsa.pem"
sample "$PORT" "$work/sample-rsa.eml"
verify_sample relayd-rsa2048 "$work/sample-rsa.eml" "$work/rsa.pem" rsa
RELAY_PID=$RELAYD_PID RELAY_IDLE_CMD= measure_relay "$PORT" "$SINK" relayd-rsa2048
stop_relayd
start_relayd ed "$DOMAIN:bench:$work/ed.pem"
sample "$PORT" "$work/sample-ed.eml"
verify_sample relayd-ed25519 "$work/sample-ed.eml" "$work/ed.pem" ed25519
RELAY_PID=$RELAYD_PID RELAY_IDLE_CMD= measure_relay "$PORT" "$SINK" relayd-ed25519
stop_relayd

echo
echo "# $ver; opendkim $(opendkim -V 2>&1 | head -1)"
echo "# smtp-source -s CONC -m MSGS -l SIZE -M $HELO_NAME -f $MAIL_FROM -t $RCPT_TO"
echo "# $ODKIM_NOTE"
print_table
echo "# per-run data: $RUNS_TSV ; total $(elapsed_s)s"
