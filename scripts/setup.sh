#!/usr/bin/env bash
# setup.sh: install every Debian package that the build, the tests, the benchmark and the demo
# need.  Idempotent: a second run installs nothing and starts nothing.  Needs root (or sudo).
#
# Postfix is preseeded to "No configuration" so only its smtp-source/smtp-sink tools are used;
# a policy-rc.d that refuses every start keeps dnsmasq, haproxy, postfix and prometheus from
# being started by the install.
set -euo pipefail

PKGS=(
  # build
  build-essential cmake pkg-config git clang-14 libclang-rt-14-dev
  libuv1-dev libnng-dev librocksdb-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler
  libc-ares-dev libcmocka-dev libmicrohttpd-dev
  # tests, demo and benchmark peers
  postfix swaks libnet-ssleay-perl dnsmasq-base haproxy python3 python3-aiosmtpd openssl iproute2 iptables
  prometheus procps psmisc curl strace bc
)

SUDO=
[[ $(id -u) == 0 ]] || SUDO=sudo

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "postfix postfix/mailname string relay.invalid" | $SUDO debconf-set-selections

# Refuse service starts during the install (invoke-rc.d consults this file).
had_policy=0
[[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
if ((!had_policy)); then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi

$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

# Make sure nothing we installed is left running (a system without policy-rc.d support).
for svc in dnsmasq haproxy prometheus prometheus-node-exporter; do
  pkill -x "$svc" 2>/dev/null || true
done
postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1 || true
echo "setup: done"
