#!/bin/bash
# make-secrets.sh [N] [HOSTNAME]: key material for deploy/k8s, written to deploy/k8s/secrets/
# (git-ignored), where kustomization.yaml's secretGenerator reads it.  N pods, default 5: the 3
# replicas and 2 more for `kubectl scale --replicas=5`.
#
#   ca.crt ca.key                  the cluster CA (P-256, 10 years)
#   relayd-0.crt/.key ...          one pair per pod, CN and SAN DNS = the pod name (= node id),
#                                  serverAuth + clientAuth: mutual TLS between peers
#   admin-ca.crt admin-ca.key      the admin CA (relayd's admin_ca, for admin_listen): apart
#                                  from the cluster CA, so relayctl's cert is no member's
#   admin.crt admin.key            relayctl's client cert (CN=admin, clientAuth), of the admin CA
#   smtp-tls.crt smtp-tls.key      a SELF-SIGNED STARTTLS cert for HOSTNAME (default
#                                  relay.example.com): replace it with one from your CA
#
# For trying the manifests out.  In production keep the CA key offline (it is not put in any
# Secret: only ca.crt is), and issue node certs from your own PKI (cert-manager works: the
# Secret needs ca.crt and relayd-N.crt/.key for every pod).  Refuses to overwrite an existing
# secrets/ directory.
set -euo pipefail
n=${1:-5}
host=${2:-relay.example.com}
[[ $n =~ ^[0-9]+$ ]] && ((n >= 1)) || { echo "usage: $0 [N] [HOSTNAME]" >&2; exit 2; }
dir=${SECRETS_DIR:-$(cd "$(dirname "$0")" && pwd)/k8s/secrets}
if [[ -e $dir ]]; then
	echo "$0: $dir exists; remove it first" >&2
	exit 1
fi
mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

make_ca() { # file-prefix subject
	openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$dir/$1.key" -out "$dir/$1.crt" -days 3650 -subj "/CN=$2" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
make_ca ca "relayd cluster CA"
make_ca admin-ca "relayd admin CA"

issue() { # name [ca-prefix [extendedKeyUsage]]
	local name=$1 ca=${2:-ca} eku=${3:-serverAuth,clientAuth}
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$dir/$name.key" -out "$tmp/$name.csr" -subj "/CN=$name" 2>/dev/null
	printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
		"extendedKeyUsage=$eku" "subjectAltName=DNS:$name" >"$tmp/$name.ext"
	openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" \
		-CAcreateserial -CAserial "$tmp/$ca.srl" -days 825 -extfile "$tmp/$name.ext" \
		-out "$dir/$name.crt" 2>/dev/null
}
for ((i = 0; i < n; i++)); do
	issue "relayd-$i"
done
issue admin admin-ca clientAuth

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	-keyout "$dir/smtp-tls.key" -out "$dir/smtp-tls.crt" -days 365 -subj "/CN=$host" \
	-addext "subjectAltName=DNS:$host" 2>/dev/null
chmod 0644 "$dir"/*.crt
echo "$dir: ca, relayd-0..relayd-$((n - 1)), admin-ca, admin, smtp-tls (self-signed for $host)"
if ((n != 5)); then
	echo "note: kustomization.yaml's secretGenerator lists relayd-0..relayd-4; edit it for $n pods" >&2
fi
