#!/usr/bin/env bash
# setup.sh: install every Debian package that the build, the tests, the benchmark and the demo
# need.  Idempotent: a second run installs nothing and starts nothing.  Needs root (or sudo).
#
# Postfix is preseeded to "No configuration" so only its smtp-source/smtp-sink tools are used;
# a policy-rc.d that refuses every start keeps dnsmasq, haproxy, postfix and prometheus from
# being started by the install.
#
# Last, the npm packages of the Kubernetes manifest validator (deploy/validate, pinned by its
# package-lock.json) are installed into deploy/validate/node_modules when missing or stale.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

PKGS=(
  # build
  build-essential cmake pkg-config git clang-14 libclang-rt-14-dev
  libuv1-dev libnng-dev librocksdb-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler
  libc-ares-dev libcmocka-dev libmicrohttpd-dev zlib1g-dev libcurl4-openssl-dev
  # tests, demo and benchmark peers
  postfix swaks libnet-ssleay-perl dnsmasq-base haproxy python3 python3-aiosmtpd openssl iproute2 iptables
  prometheus procps psmisc curl strace bc
  # libfaketime: tests/integration/test_lease_clock.py steps the nodes' wall clocks
  faketime
  # outbound TLS tests: a validating resolver, an authoritative server, zone signing
  unbound nsd ldnsutils
  # issue 13: real DKIM verifiers (and OpenDKIM as Postfix's milter in bench/e2e.sh), real
  # bounce parsers run on our DSNs
  python3-dkim python3-nacl python3-dnspython opendkim opendkim-tools python3-flufl.bounce libmail-deliverystatus-bounceparser-perl
  libsisimai-perl
  # TLS profile checks of the SMTP listener (tests/integration/test_abuse.py)
  testssl.sh sslscan
  # bench/latency.py's event loop (a lighter load generator on the relay's two cores)
  python3-uvloop
)
# deploy/validate runs on Node.js (>= 18) with npm.  Debian 12's nodejs and npm do; a machine
# whose npm comes from elsewhere (e.g. a newer Node.js) keeps it.
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)

SUDO=
[[ $(id -u) == 0 ]] || SUDO=sudo

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
install_packages() {
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
  for svc in dnsmasq haproxy prometheus prometheus-node-exporter unbound nsd opendkim; do
    pkill -x "$svc" 2>/dev/null || true
  done
  postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1 || true
  echo "setup: done"
}

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PKGS[@]} packages present"
else
  install_packages
fi

# The manifest validator's npm packages (never committed: deploy/.gitignore).  npm ci installs
# exactly package-lock.json; a copy of the lock in node_modules marks a finished install.
validate=$top/deploy/validate
if [[ -f $validate/package-lock.json ]]; then
  if cmp -s "$validate/package-lock.json" "$validate/node_modules/.setup-lock.json" 2>/dev/null; then
    echo "setup: deploy/validate npm packages present"
  else
    echo "setup: npm ci in deploy/validate"
    npm ci --prefix "$validate" --no-audit --no-fund --loglevel=error
    cp "$validate/package-lock.json" "$validate/node_modules/.setup-lock.json"
  fi
fi

# The npm bounce parser of tests/integration/test_dsn_parsers.py (email-bounce-parser, pinned by
# tests/integration/bounce_parsers/package-lock.json).  Its re2 dependency compiles a native
# module (minutes on 2 cores), so the install lives in a machine cache keyed by the lock file and
# each clone links to it: a fresh clone on the same machine (CI) does not compile it again.
bp=$top/tests/integration/bounce_parsers
if [[ -f $bp/package-lock.json ]]; then
  key=$(sha256sum "$bp/package-lock.json" | cut -c1-16)
  cache=/var/cache/relayd-tests/bounce-parsers-$key
  if [[ -f $cache/node_modules/.setup-lock.json ]]; then
    echo "setup: bounce parser npm packages present ($cache)"
  else
    echo "setup: npm ci for the bounce parsers in $cache (compiles re2: a few minutes)"
    $SUDO mkdir -p "$cache"
    $SUDO cp "$bp/package.json" "$bp/package-lock.json" "$cache/"
    (cd "$cache" && $SUDO npm ci --no-audit --no-fund --loglevel=error)
    $SUDO cp "$bp/package-lock.json" "$cache/node_modules/.setup-lock.json"
  fi
  if [[ $(readlink "$bp/node_modules" 2>/dev/null) != "$cache/node_modules" ]]; then
    rm -rf "$bp/node_modules"
    ln -s "$cache/node_modules" "$bp/node_modules"
  fi
fi
