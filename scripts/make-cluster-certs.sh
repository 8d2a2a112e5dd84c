#!/bin/bash
# make-cluster-certs.sh DIR N: a cluster CA and N node certificates, an admin CA and relayctl's
# certificate, for tests and the demo.
# make-cluster-certs.sh DIR NAME [NAME...]: the same with the nodes' names given (node ids such
#                                  as n1 or relayd-0; a single all-digit argument is N).
#
# Writes into DIR (created if missing):
#   ca.crt ca.key                  the cluster CA (P-256, self-signed, 10 years)
#   node1.crt node1.key ... nodeN  one pair per node: CN=nodeI, SAN DNS:nodeI, serverAuth and
#                                  clientAuth (the same cert listens and dials: mutual TLS);
#                                  NAME.crt NAME.key when names are given
#   admin-ca.crt admin-ca.key      the admin CA (relayd's admin_ca): apart from the cluster CA,
#                                  so relayctl's certificate is never a cluster member's
#                                  credential (a cert of the cluster CA may send Raft frames)
#   admin.crt admin.key            relayctl's client cert (CN=admin, clientAuth), of the admin CA
# Keys are unencrypted PKCS#8 PEM, mode 0600.  The node id in the relay config must equal the
# cert's name: a dialing node checks that the peer it reaches holds the cert of the peer id it
# dials (cluster/transport.h).  Not for production key management: the CA key sits next to the
# certs.
set -euo pipefail

usage() {
	echo "usage: $0 DIR N | $0 DIR NAME [NAME...]" >&2
	exit 2
}
[ $# -ge 2 ] || usage
dir=$1
shift
names=()
if [ $# -eq 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then
	[ "$1" -ge 1 ] || usage
	for i in $(seq 1 "$1"); do
		names+=("node$i")
	done
else
	for name in "$@"; do
		[[ $name =~ ^[A-Za-z0-9._-]{1,63}$ ]] && [ "$name" != admin ] && [ "$name" != ca ] && [ "$name" != admin-ca ] || {
			echo "$0: bad node name '$name' (letters, digits, '-', '_', '.'; max 63)" >&2
			exit 2
		}
		names+=("$name")
	done
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
make_ca ca "relay cluster CA"
make_ca admin-ca "relay admin CA"

issue() { # name [ca-prefix [extendedKeyUsage]]
	local name=$1 ca=${2:-ca} eku=${3:-serverAuth,clientAuth}
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$dir/$name.key" -out "$tmp/$name.csr" -subj "/CN=$name" 2>/dev/null
	cat >"$tmp/$name.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$eku
subjectAltName=DNS:$name
EXT
	openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" \
		-CAcreateserial -CAserial "$tmp/$ca.srl" -days 825 -extfile "$tmp/$name.ext" \
		-out "$dir/$name.crt" 2>/dev/null
}

for name in "${names[@]}"; do
	issue "$name"
done
issue admin admin-ca clientAuth
chmod 0644 "$dir"/*.crt
echo "$dir: ca.crt, ${names[*]}, admin-ca.crt, admin (of admin-ca)"
