/*
 * config.c: the key table and the parsers behind config.h.
 *
 * The table is the single source of truth: config_set() finds a key in it, parses the value by
 * its type into the field at its offset, and config_print_table() prints it for the README.
 * Parsers are strict: trailing garbage, overflow, an empty required value or a list over
 * CONFIG_LIST_MAX entries is an error naming the key and where the value came from.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <strings.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mailbox.h"

enum config_type {
	CT_STRING,
	CT_UINT,
	CT_SIZE,
	CT_DURATION,
	CT_LIST,
	CT_DOMAINS,
	CT_ADDRS,
	CT_CIDRS,
	CT_TRANSPORT,
	CT_LOGLEVEL,
	CT_BOOL, /* exactly yes or no, into a bool */
	CT_TLS_POLICY,
	CT_CHOICE, /* one of the words in config_key.choices ("a|b") */
};

struct config_key {
	const char *name;
	enum config_type type;
	size_t off;
	const char *def;
	uint64_t min, max; /* for numbers (after unit conversion) */
	const char *help;
	const char *choices; /* CT_CHOICE: the accepted words, '|'-separated */
};

#define OFF(f) offsetof(struct relay_config, f)
#define U64MAX UINT64_MAX

static const struct config_key config_keys[] = {
    {"node_id", CT_STRING, OFF(node_id), "", 0, 0,
     "This node's id, unique in the cluster (letters, digits, '-', '_', '.'; max 63). Empty: the host name."},
    {"hostname", CT_STRING, OFF(hostname), "", 0, 0,
     "Name used in the SMTP greeting, EHLO reply, Received: headers and DSNs: a domain name (letters, digits, '-' and '.'; labels of 1-63, at most 253). Empty: the host name, which must be one."},
    {"data_dir", CT_STRING, OFF(data_dir), "/var/lib/relayd", 0, 0,
     "Directory of the node's RocksDB (Raft log, queue, bodies). Created if missing."},
    {"smtp_listen", CT_ADDRS, OFF(smtp_listen), "0.0.0.0:25", 0, 0,
     "SMTP listeners, list of addr:port ([v6]:port for IPv6)."},
    {"mynetworks", CT_CIDRS, OFF(mynetworks), "127.0.0.0/8, ::1/128", 0, 0,
     "Trusted clients (CIDR list): they may relay to any domain."},
    {"http_listen", CT_ADDRS, OFF(http_listen), "", 0, 0,
     "HTTP endpoint for /healthz, /readyz and /metrics: one addr:port. Empty: off."},
    {"admin_listen", CT_ADDRS, OFF(admin_listen), "", 0, 0,
     "relayctl's TCP endpoint (one addr:port, e.g. 10.0.0.11:7402). With admin_ca set it is mutual TLS (relayctl needs a certificate of admin_ca; the node shows its cluster_cert) and may listen anywhere; without it plain TCP, loopback only (open to every local user: prefer admin_socket). Empty: off."},
    {"admin_socket", CT_STRING, OFF(admin_socket), "admin.sock", 0, 0,
     "relayctl's unix socket (a path; relative: inside data_dir), created mode 0600 so only relayd's user (and root) may use it. Empty: off."},
    {"admin_ca", CT_STRING, OFF(admin_ca), "", 0, 0,
     "PEM CA of relayctl's certificates on admin_listen (scripts/make-cluster-certs.sh makes one apart from the cluster CA, so an admin certificate is never a cluster member's credential). Needs cluster_cert/cluster_key (the node's side)."},
    {"proxy_from", CT_CIDRS, OFF(proxy_from), "", 0, 0,
     "Load balancers (CIDR list) that must start each connection with a PROXY v1/v2 header naming the real client; a PROXY header from anyone else is refused."},
    {"own_addresses", CT_ADDRS, OFF(own_addresses), "", 0, 0,
     "Where others reach this node's SMTP listeners besides smtp_listen (a NAT, the load balancer), list of addr:port. Delivery never connects to these nor to its own listeners (a wildcard listener covers every local address): mail whose only hosts are this node bounces with 5.4.6 \"mail for DOMAIN loops back to myself\"."},
    {"postmaster_address", CT_STRING, OFF(postmaster_address), "", 0, 0,
     "Where mail for <postmaster> and postmaster@hostname goes (RFC 5321 4.5.1), e.g. ops@example.com. Empty: RCPT TO:<postmaster> gets 550 5.1.1."},
    {"bounce_content", CT_CHOICE, OFF(bounce_content), "headers", 0, 0,
     "What a DSN returns of a message from a client neither in mynetworks nor authenticated: headers (text/rfc822-headers only) or full (the message, as RET asks, up to 64 KiB). Trusted and authenticated clients always get full.", "headers|full"},
    {"max_hops", CT_UINT, OFF(max_hops), "50", 1, 1000,
     "A message with this many Received: headers or more is refused at the end of DATA with 554 5.4.6 (a mail loop)."},
    {"relay_domains", CT_DOMAINS, OFF(relay_domains), "", 0, 0,
     "Domains we accept mail for from anyone (list). Everything else needs mynetworks or AUTH."},
    {"dns_servers", CT_ADDRS, OFF(dns_servers), "", 0, 0,
     "DNS servers for MX lookups, list of addr:port. Empty: the servers of /etc/resolv.conf."},
    {"relayhost", CT_STRING, OFF(relayhost), "", 0, 0,
     "Smarthost for all mail: host[:port] (MX lookup) or [host]:port (no MX lookup). Empty: none."},
    {"transport", CT_TRANSPORT, OFF(transport), "", 0, 0,
     "Per-domain routes, list of domain=host:port (overrides relayhost and MX)."},
    {"max_message_size", CT_SIZE, OFF(max_message_size), "10m", 1024, (uint64_t)100 << 20,
     "Largest message accepted, in bytes (k/m/g suffix). At most 100m. Advertised with SIZE and enforced in DATA/BDAT."},
    {"max_receive_memory", CT_SIZE, OFF(max_receive_memory), "256m", (uint64_t)1 << 20,
     (uint64_t)64 << 30,
     "Node-wide bound on the memory of message bodies being received and of messages proposed but not yet committed (k/m/g suffix; at least max_message_size). A transaction that would pass it gets 452 4.3.1 at DATA/BDAT or at the end of its data."},
    {"max_recipients", CT_UINT, OFF(max_recipients), "1000", 1, 1000,
     "Recipients per message (at most 1000); more get 452 4.5.3."},
    {"tls_cert", CT_STRING, OFF(tls_cert), "", 0, 0,
     "PEM certificate chain for STARTTLS. Empty: STARTTLS and AUTH are not offered."},
    {"tls_key", CT_STRING, OFF(tls_key), "", 0, 0, "PEM private key for tls_cert."},
    {"tls_ciphers", CT_STRING, OFF(tls_ciphers),
     "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
     0, 0,
     "OpenSSL cipher list for TLS 1.2 on the SMTP listeners (STARTTLS); the default is Mozilla's intermediate profile without DHE (ECDHE key exchange, AEAD ciphers only). TLS 1.3 uses OpenSSL's suites; TLS 1.1 and older are refused."},
    {"auth_users_file", CT_STRING, OFF(auth_users_file), "", 0, 0,
     "File of user:hash lines (crypt(3) hashes, e.g. from `openssl passwd -6`). Empty: no AUTH. Re-read on SIGHUP."},
    {"sender_permissions_file", CT_STRING, OFF(sender_permissions_file), "", 0, 0,
     "File of `user: pattern, ...` lines: the senders (MAIL FROM) each AUTH user may use; a pattern is an address, @domain or * (any, <> included). A user not listed may send as nobody: 553 5.7.1. mynetworks clients are not checked. Empty: any sender. Re-read on SIGHUP."},
    {"max_messages_per_hour_per_user", CT_UINT, OFF(max_messages_per_hour_per_user), "0", 0,
     1000000,
     "Messages an AUTH user may send per hour, counted cluster-wide by the replicated queue (an hour from the user's first message in a window); more get 450 4.7.1 naming the reset time and are not queued. 0: no quota."},
    {"max_messages_per_hour_per_client", CT_UINT, OFF(max_messages_per_hour_per_client), "0",
     0, 1000000,
     "Messages a client address (IPv6: its /64) outside mynetworks may send per hour, counted cluster-wide like max_messages_per_hour_per_user. 0: no quota."},
    {"dkim_keys", CT_LIST, OFF(dkim_keys), "", 0, 0,
     "DKIM signing keys, list of domain:selector:keyfile (PEM private key: RSA of 2048 bits or more, or Ed25519 per RFC 8463; a domain may have one of each and gets both signatures). Mail from mynetworks and AUTH clients whose From: domain has a key is signed once, on the accepting node, before it is queued. Empty: no signing."},
    {"dkim_sign_subdomains", CT_BOOL, OFF(dkim_sign_subdomains), "no", 0, 0,
     "yes: a From: domain without a key of its own is signed with the keys of its nearest parent domain in dkim_keys (d= the parent)."},
    {"dkim_headers", CT_LIST, OFF(dkim_headers), "", 0, 0,
     "Header fields DKIM signs (list of names), each instance present; From is always signed and oversigned. Empty: from, reply-to, sender, subject, date, to, cc, message-id, in-reply-to, references, mime-version, content-type, content-transfer-encoding, content-disposition, content-id and the list-* fields."},
    {"max_line_length", CT_UINT, OFF(max_line_length), "2048", 512, 65536,
     "Longest SMTP command line in bytes, CRLF included (RFC 5321 4.5.3.1.4 minimum 512)."},
    {"auth_failures_per_minute_per_client", CT_UINT, OFF(auth_failures_per_minute_per_client),
     "10", 1, 100000,
     "Failed AUTH attempts per minute from one client (address, grouped by client_ipv4_prefix / client_ipv6_prefix); beyond, AUTH gets 454 4.7.0 until the minute is over."},
    {"max_concurrent_auth", CT_UINT, OFF(max_concurrent_auth), "32", 1, 100000,
     "Password checks queued or running at once on the AUTH worker threads (node-wide); more get 454 4.7.0."},
    {"max_errors", CT_UINT, OFF(max_errors), "10", 1, 1000,
     "Errors per SMTP session before 421 4.7.0 and disconnect."},
    {"command_timeout", CT_DURATION, OFF(command_timeout_ms), "5m", 1000, 86400000,
     "Idle time allowed while waiting for a command (RFC 5321 4.5.3.2.7)."},
    {"data_timeout", CT_DURATION, OFF(data_timeout_ms), "5m", 1000, 86400000,
     "Idle time allowed between data blocks during DATA/BDAT."},
    {"data_total_timeout", CT_DURATION, OFF(data_total_timeout_ms), "30m", 1000, 86400000,
     "Longest time one message's data (DATA, or all its BDAT chunks) may take, however steadily it comes; then 421 4.4.2."},
    {"min_data_rate", CT_SIZE, OFF(min_data_rate), "500", 0, (uint64_t)1 << 30,
     "Slowest data transfer accepted, in bytes per second (k/m suffix): a message's data may take data_timeout plus its bytes / min_data_rate, else 421 4.4.2. 0: no rate check."},
    {"max_connections", CT_UINT, OFF(max_connections), "1000", 1, 1000000,
     "Concurrent SMTP connections in total; more get 421 4.7.0."},
    {"max_connections_per_client", CT_UINT, OFF(max_connections_per_client), "100", 1, 1000000,
     "Concurrent SMTP connections from one client (address, grouped by client_ipv4_prefix / client_ipv6_prefix); more get 421 4.7.0."},
    {"client_ipv4_prefix", CT_UINT, OFF(client_ipv4_prefix), "32", 8, 32,
     "IPv4 clients within one prefix of this length count as one client for max_connections_per_client and auth_failures_per_minute_per_client."},
    {"client_ipv6_prefix", CT_UINT, OFF(client_ipv6_prefix), "64", 16, 128,
     "IPv6 clients within one prefix of this length (one /64: one site) count as one client for max_connections_per_client and auth_failures_per_minute_per_client."},
    {"shutdown_timeout", CT_DURATION, OFF(shutdown_timeout_ms), "10s", 0, 3600000,
     "On SIGTERM: how long open sessions may finish before they are cut with 421."},
    {"propose_timeout", CT_DURATION, OFF(propose_timeout_ms), "30s", 100, 3600000,
     "How long a session waits for its message to be committed before answering 451 4.3.0."},
    {"max_pending_proposals", CT_UINT, OFF(max_pending_proposals), "10000", 1, 1000000,
     "Messages waiting to be committed at once; more get 451 4.3.0."},
    {"log_level", CT_LOGLEVEL, OFF(log_level), "info", 0, 0, "debug, info, warn or error."},
    {"lease", CT_DURATION, OFF(lease_ms), "4s", 500, 600000,
     "Delivery ownership lease: an owner that has not renewed it through the log for this long starts no attempt; the leader moves its domains after lease plus a grace of max(1s, lease/4)."},
    {"drain_timeout", CT_DURATION, OFF(drain_timeout_ms), "30s", 0, 3600000,
     "relayctl drain: how long a draining node lets its attempts in flight finish before it abandons them (they stay queued) and hands its domains over."},
    {"retry_base", CT_DURATION, OFF(retry_base_ms), "60s", 100, 86400000,
     "Delay before the first retry of a deferred recipient; doubles after each failed attempt up to retry_max."},
    {"retry_max", CT_DURATION, OFF(retry_max_ms), "1h", 100, 7 * 86400000ull,
     "Longest delay between two delivery attempts (at least retry_base)."},
    {"queue_lifetime", CT_DURATION, OFF(queue_lifetime_ms), "5d", 1000, 60 * 86400000ull,
     "How long a message may stay queued; then its undelivered recipients bounce (RFC 5321 4.5.4.1)."},
    {"delay_warning_time", CT_DURATION, OFF(delay_warning_time_ms), "4h", 0, 60 * 86400000ull,
     "After this long queued, one \"delayed\" DSN goes to senders who asked for NOTIFY=DELAY. 0: never."},
    {"max_deliveries", CT_UINT, OFF(max_deliveries), "100", 1, 100000,
     "Outgoing SMTP connections in total (delivery concurrency)."},
    {"max_connections_per_destination", CT_UINT, OFF(max_connections_per_destination), "10", 1,
     10000, "Outgoing SMTP connections to one destination (domain, relayhost or transport route)."},
    {"max_messages_per_minute_per_destination", CT_UINT,
     OFF(max_messages_per_minute_per_destination), "0", 0, 6000000,
     "Messages started per minute to one destination (domain, relayhost or transport route), bursts up to a second's worth (at least 1); 0: no limit. An MX domain has one owner in a cluster, so the limit holds cluster-wide; a relayhost or transport route shared by domains of several owners gets it per node."},
    {"max_messages_per_connection", CT_UINT, OFF(max_messages_per_connection), "100", 1, 1000000,
     "Messages sent over one outgoing connection before it is closed (connection reuse bound)."},
    {"tls_required_domains", CT_DOMAINS, OFF(tls_required_domains), "", 0, 0,
     "Recipient domains that must be delivered over STARTTLS (list); other domains use TLS when offered."},
    {"connect_timeout", CT_DURATION, OFF(connect_timeout_ms), "30s", 100, 600000,
     "How long an outgoing connection may take to connect before the next address is tried."},
    {"delivery_attempt_timeout", CT_DURATION, OFF(delivery_attempt_timeout_ms), "10m", 1000,
     86400000,
     "Longest one delivery attempt (a message's transaction on a connection, across the MX hosts it fails over to) may take up to its end of data; then it is cut and its recipients are deferred. Each phase (connect, greeting, EHLO, STARTTLS, MAIL, RCPT, DATA, each body write) also has its own deadline (RFC 5321 4.5.3.2; connect_timeout) that partial replies do not extend. The reply to the end of data keeps its RFC 5321 10 minutes."},
    {"tls_policy", CT_TLS_POLICY, OFF(tls_policy), "", 0, 0,
     "Outbound TLS per recipient domain, list of domain=level: may (STARTTLS when offered, no certificate check: the default), encrypt (TLS or no delivery), verify (TLS with a certificate valid for the MX host name, chained to tls_ca_file), dane (RFC 7672: TLSA records authenticate the MX when DNSSEC proves them, else as may), dane-only (DANE or no delivery). A domain in tls_required_domains is encrypt."},
    {"tls_ca_file", CT_STRING, OFF(tls_ca_file), "", 0, 0,
     "PEM CA certificates trusted for outbound TLS (tls_policy verify, MTA-STS MX hosts and policy fetches). Empty: the system store."},
    {"dns_dnssec_trusted", CT_BOOL, OFF(dns_dnssec_trusted), "no", 0, 0,
     "yes: dns_servers are validating resolvers on a trusted path, so their AD bit marks DNSSEC-secure answers (needed for dane and dane-only; without it DANE never applies)."},
    {"mta_sts", CT_BOOL, OFF(mta_sts), "yes", 0, 0,
     "Look up MTA-STS policies (RFC 8461) of MX domains: enforce delivers only to MX hosts the policy names, over TLS with a verified certificate; testing delivers anyway and logs what enforce would refuse. Policies are cached per node for their max_age."},
    {"cluster_listen", CT_STRING, OFF(cluster_listen), "", 0, 0,
     "Address (addr:port) for Raft traffic between nodes. Empty: a single node (no replication)."},
    {"peers", CT_LIST, OFF(peers), "", 0, 0,
     "Cluster members, list of id=host:port (their cluster_listen). This node included: a new cluster is bootstrapped with all of them as voters (fewer than two: a single node). This node not in the list: it joins the cluster they form once `relayctl node add` names it. Only bootstraps: afterwards the membership stored in data_dir wins."},
    {"auto_join", CT_BOOL, OFF(auto_join), "no", 0, 0,
     "yes: members admit a new node by themselves: a node outside `peers` whose cluster certificate the cluster CA signed asks to join and the leader adds it (a learner, promoted to voter once caught up), as `relayctl node add` would; this node, outside its own `peers`, asks so. Needs cluster TLS (cluster_ca, cluster_cert, cluster_key). no: a new node waits for `relayctl node add`. deploy/ sets yes (kubectl scale)."},
    {"cluster_advertise", CT_STRING, OFF(cluster_advertise), "", 0, 0,
     "Address (host:port) at which the other nodes reach this node's cluster_listen, announced when a node outside its own `peers` joins (with auto_join; `relayctl node add` names it instead). Empty: cluster_listen itself, which must then not be a wildcard (0.0.0.0, [::]) for auto_join."},
    {"cluster_ca", CT_STRING, OFF(cluster_ca), "", 0, 0,
     "PEM CA of the cluster: peers must present a certificate it signed (mutual TLS). cluster_ca, cluster_cert and cluster_key: all or none; none means plain TCP between nodes (INSECURE: for tests and trusted networks only)."},
    {"cluster_insecure", CT_BOOL, OFF(cluster_insecure), "no", 0, 0,
     "yes: allow cluster_listen on a non-loopback address without cluster TLS (anyone reaching the port can then inject commands: an open relay by the back door). no: plain cluster traffic only on loopback."},
    {"cluster_cert", CT_STRING, OFF(cluster_cert), "", 0, 0,
     "PEM certificate of this node for cluster traffic, naming node_id (scripts/make-cluster-certs.sh)."},
    {"cluster_key", CT_STRING, OFF(cluster_key), "", 0, 0, "PEM private key for cluster_cert."},
    {"election_timeout", CT_DURATION, OFF(election_timeout_ms), "1s", 100, 60000,
     "Raft election timeout: a follower that hears no leader for this long (randomized up to twice it) starts an election."},
    {"heartbeat_interval", CT_DURATION, OFF(heartbeat_interval_ms), "100ms", 10, 10000,
     "Raft leader heartbeat interval and tick (at most half the election_timeout)."},
    /* max: CLUSTER_MAX_SNAPSHOT_ENTRIES (cluster/cluster_types.h) */
    {"snapshot_entries", CT_UINT, OFF(snapshot_entries), "8192", 16, 32768,
     "Raft log entries applied between two snapshots of the queue (log compaction; also after 256 MiB of applied entries). At most 32768: the in-memory Raft log holds 65536 entries. Snapshots are streamed: no size bound."},
};

#define NKEYS (sizeof(config_keys) / sizeof(config_keys[0]))

static char config_errbuf[512];

const char *
config_error(void)
{
	return config_errbuf;
}

static int __attribute__((format(printf, 1, 2)))
config_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(config_errbuf, sizeof(config_errbuf), fmt, ap);
	va_end(ap);
	return -1;
}

static const struct config_key *
config_find(const char *name)
{
	char norm[64];
	size_t n = strlen(name);
	if (n == 0 || n >= sizeof(norm))
		return NULL;
	for (size_t i = 0; i <= n; i++)
		norm[i] = name[i] == '-' ? '_' : (char)tolower((unsigned char)name[i]);
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(config_keys[i].name, norm) == 0)
			return &config_keys[i];
	return NULL;
}

static char *
trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

/* Parses an unsigned number with an optional unit suffix table. */
static int
parse_number(const char *text, uint64_t *out, const char *const *units, const uint64_t *mult,
	     uint64_t bare)
{
	const char *p = text;
	if (!isdigit((unsigned char)*p))
		return -1;
	uint64_t v = 0;
	while (isdigit((unsigned char)*p)) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
		p++;
	}
	uint64_t m = bare;
	if (*p != '\0') {
		m = 0;
		for (size_t i = 0; units[i] != NULL; i++)
			if (strcasecmp(p, units[i]) == 0) {
				m = mult[i];
				break;
			}
		if (m == 0)
			return -1;
	}
	if (v != 0 && m > UINT64_MAX / v)
		return -1;
	*out = v * m;
	return 0;
}

int
config_parse_duration(const char *text, uint64_t *ms)
{
	static const char *const units[] = {"ms", "s", "m", "h", "d", NULL};
	static const uint64_t mult[] = {1, 1000, 60000, 3600000, 86400000};
	return parse_number(text, ms, units, mult, 1000);
}

int
config_parse_size(const char *text, uint64_t *bytes)
{
	static const char *const units[] = {"k", "m", "g", "kb", "mb", "gb", NULL};
	static const uint64_t mult[] = {1 << 10, 1 << 20, 1 << 30, 1 << 10, 1 << 20, 1 << 30};
	return parse_number(text, bytes, units, mult, 1);
}

int
config_parse_addr(const char *text, struct config_addr *out)
{
	char host[64];
	const char *port;
	memset(out, 0, sizeof(*out));
	if (text[0] == '[') {
		const char *end = strchr(text, ']');
		if (end == NULL || end[1] != ':' || (size_t)(end - text - 1) >= sizeof(host))
			return -1;
		memcpy(host, text + 1, (size_t)(end - text - 1));
		host[end - text - 1] = '\0';
		port = end + 2;
	} else {
		const char *colon = strrchr(text, ':');
		if (colon == NULL || strchr(text, ':') != colon || (size_t)(colon - text) >= sizeof(host))
			return -1;
		memcpy(host, text, (size_t)(colon - text));
		host[colon - text] = '\0';
		port = colon + 1;
	}
	uint64_t p;
	if (parse_number(port, &p, (const char *const[]){NULL}, NULL, 1) != 0 || p == 0 || p > 65535)
		return -1;
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)p);
		out->len = sizeof(*sin);
		snprintf(out->text, sizeof(out->text), "%s:%u", host, (unsigned)p);
	} else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)p);
		out->len = sizeof(*sin6);
		snprintf(out->text, sizeof(out->text), "[%s]:%u", host, (unsigned)p);
	} else {
		return -1;
	}
	return 0;
}

static int
parse_cidr(const char *text, struct config_cidr *out)
{
	char host[64];
	const char *slash = strchr(text, '/');
	size_t hl = slash ? (size_t)(slash - text) : strlen(text);
	if (hl == 0 || hl >= sizeof(host))
		return -1;
	memcpy(host, text, hl);
	host[hl] = '\0';
	memset(out, 0, sizeof(*out));
	unsigned maxp;
	if (inet_pton(AF_INET, host, out->addr) == 1) {
		out->family = AF_INET;
		maxp = 32;
	} else if (inet_pton(AF_INET6, host, out->addr) == 1) {
		out->family = AF_INET6;
		maxp = 128;
	} else {
		return -1;
	}
	out->prefix = maxp;
	if (slash != NULL) {
		uint64_t p;
		if (parse_number(slash + 1, &p, (const char *const[]){NULL}, NULL, 1) != 0 || p > maxp)
			return -1;
		out->prefix = (unsigned)p;
	}
	return 0;
}

static bool
cidr_contains(const struct config_cidr *c, int family, const uint8_t *a)
{
	if (c->family != family)
		return false;
	unsigned full = c->prefix / 8, rest = c->prefix % 8;
	if (memcmp(c->addr, a, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (c->addr[full] & mask) == (a[full] & mask);
}

int
config_cidr_match(const struct config_cidr_list *l, const struct sockaddr *sa)
{
	uint8_t a[16];
	int family = sa->sa_family;
	if (family == AF_INET) {
		memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		memcpy(a, &s6->sin6_addr, 16);
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			family = AF_INET;
			memmove(a, a + 12, 4);
		}
	} else {
		return 0;
	}
	for (size_t i = 0; i < l->n; i++)
		if (cidr_contains(&l->v[i], family, a))
			return 1;
	return 0;
}

/* Splits a list value on commas and blanks into at most CONFIG_LIST_MAX items. */
static int
split_list(const char *value, char *items[CONFIG_LIST_MAX], size_t *n, char *buf, size_t cap)
{
	size_t len = strlen(value);
	if (len >= cap)
		return -1;
	memcpy(buf, value, len + 1);
	*n = 0;
	for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok != NULL;
	     tok = strtok_r(NULL, ", \t", &save)) {
		if (*n == CONFIG_LIST_MAX)
			return -1;
		items[(*n)++] = tok;
	}
	return 0;
}

static bool
valid_domain(const char *d)
{
	size_t n = strlen(d), label = 0;
	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum(c) || c == '-' || c == '_') {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0;
}

/* A tls_policy entry: domain=level, lowercased in place. */
static int
tls_policy_entry_check(char *it, const char *source)
{
	static const char *const levels[] = {CONFIG_TLS_LEVELS};
	for (char *p = it; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	char *eq = strchr(it, '=');
	if (eq == NULL)
		return config_fail("%s: tls_policy: '%s' is not domain=level", source, it);
	*eq = '\0';
	bool ok = valid_domain(it);
	*eq = '=';
	if (!ok)
		return config_fail("%s: tls_policy: '%s' is not domain=level (bad domain)", source,
				   it);
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcmp(eq + 1, levels[i]) == 0)
			return 0;
	return config_fail("%s: tls_policy: '%s': the level must be one of may, encrypt, verify, "
			   "dane, dane-only",
			   source, it);
}

static void
list_free(struct config_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	l->n = 0;
}

int
config_set(struct relay_config *cfg, const char *name, const char *value, const char *source)
{
	const struct config_key *k = config_find(name);
	if (k == NULL)
		return config_fail("%s: unknown configuration key '%s'", source, name);
	if (strlen(value) >= CONFIG_VALUE_MAX)
		return config_fail("%s: %s: value too long", source, k->name);
	void *field = (char *)cfg + k->off;
	char buf[CONFIG_VALUE_MAX];
	char *items[CONFIG_LIST_MAX];
	size_t n = 0;
	uint64_t num;

	switch (k->type) {
	case CT_STRING: {
		char *s = strdup(value);
		if (s == NULL)
			return config_fail("%s: %s: out of memory", source, k->name);
		free(*(char **)field);
		*(char **)field = s;
		return 0;
	}
	case CT_LOGLEVEL:
		if (strcmp(value, "debug") && strcmp(value, "info") && strcmp(value, "warn") &&
		    strcmp(value, "error"))
			return config_fail("%s: %s: '%s' is not one of debug, info, warn, error",
					   source, k->name, value);
		free(*(char **)field);
		*(char **)field = strdup(value);
		return *(char **)field ? 0 : config_fail("%s: out of memory", source);
	case CT_BOOL:
		if (strcmp(value, "yes") == 0)
			*(bool *)field = true;
		else if (strcmp(value, "no") == 0)
			*(bool *)field = false;
		else
			return config_fail("%s: %s: '%s' is not yes or no", source, k->name, value);
		return 0;
	case CT_CHOICE: {
		const char *c = k->choices;
		size_t vl = strlen(value);
		while (c != NULL && *c != '\0') {
			const char *bar = strchr(c, '|');
			size_t cl = bar ? (size_t)(bar - c) : strlen(c);
			if (cl == vl && strncmp(c, value, vl) == 0) {
				char *s = strdup(value);
				if (s == NULL)
					return config_fail("%s: %s: out of memory", source, k->name);
				free(*(char **)field);
				*(char **)field = s;
				return 0;
			}
			c = bar ? bar + 1 : c + cl;
		}
		return config_fail("%s: %s: '%s' is not one of %s", source, k->name, value,
				   k->choices);
	}
	case CT_UINT:
		if (parse_number(value, &num, (const char *const[]){NULL}, NULL, 1) != 0)
			return config_fail("%s: %s: '%s' is not a number", source, k->name, value);
		goto range;
	case CT_SIZE:
		if (config_parse_size(value, &num) != 0)
			return config_fail("%s: %s: '%s' is not a size (e.g. 10m, 512k, 1048576)",
					   source, k->name, value);
		goto range;
	case CT_DURATION:
		if (config_parse_duration(value, &num) != 0)
			return config_fail("%s: %s: '%s' is not a duration (e.g. 30s, 5m, 1h, 2d)",
					   source, k->name, value);
	range:
		if (num < k->min || num > k->max)
			return config_fail("%s: %s: %s is out of range (%llu..%llu%s)", source,
					   k->name, value, (unsigned long long)k->min,
					   (unsigned long long)k->max,
					   k->type == CT_DURATION ? " ms"
					   : k->type == CT_SIZE	  ? " bytes"
								  : "");
		*(uint64_t *)field = num;
		return 0;
	case CT_LIST:
	case CT_DOMAINS:
	case CT_TLS_POLICY:
	case CT_TRANSPORT: {
		if (split_list(value, items, &n, buf, sizeof(buf)) != 0)
			return config_fail("%s: %s: more than %d entries", source, k->name,
					   CONFIG_LIST_MAX);
		struct config_list nl = {0};
		for (size_t i = 0; i < n; i++) {
			char *it = items[i];
			for (char *p = it; *p; p++)
				if (k->type == CT_DOMAINS)
					*p = (char)tolower((unsigned char)*p);
			if (k->type == CT_DOMAINS && !valid_domain(it)) {
				list_free(&nl);
				return config_fail("%s: %s: '%s' is not a domain", source, k->name, it);
			}
			if (k->type == CT_TLS_POLICY && tls_policy_entry_check(it, source) != 0) {
				list_free(&nl);
				return -1;
			}
			if (k->type == CT_TRANSPORT) {
				char *eq = strchr(it, '=');
				struct config_addr a;
				if (eq == NULL) {
					list_free(&nl);
					return config_fail("%s: %s: '%s' is not domain=host:port",
							   source, k->name, it);
				}
				*eq = '\0';
				bool ok = valid_domain(it) && strchr(eq + 1, ':') != NULL;
				(void)a;
				for (char *p = it; *p; p++)
					*p = (char)tolower((unsigned char)*p);
				*eq = '=';
				if (!ok) {
					list_free(&nl);
					return config_fail("%s: %s: '%s' is not domain=host:port",
							   source, k->name, it);
				}
			}
			if ((nl.v[nl.n++] = strdup(it)) == NULL) {
				list_free(&nl);
				return config_fail("%s: out of memory", source);
			}
		}
		list_free((struct config_list *)field);
		*(struct config_list *)field = nl;
		return 0;
	}
	case CT_ADDRS: {
		if (split_list(value, items, &n, buf, sizeof(buf)) != 0)
			return config_fail("%s: %s: more than %d entries", source, k->name,
					   CONFIG_LIST_MAX);
		struct config_addr_list *l = field;
		struct config_addr_list nl = {0};
		for (size_t i = 0; i < n; i++)
			if (config_parse_addr(items[i], &nl.v[nl.n++]) != 0)
				return config_fail("%s: %s: '%s' is not addr:port (numeric address; "
						   "[addr]:port for IPv6)",
						   source, k->name, items[i]);
		*l = nl;
		return 0;
	}
	case CT_CIDRS: {
		if (split_list(value, items, &n, buf, sizeof(buf)) != 0)
			return config_fail("%s: %s: more than %d entries", source, k->name,
					   CONFIG_LIST_MAX);
		struct config_cidr_list *l = field;
		struct config_cidr_list nl = {0};
		for (size_t i = 0; i < n; i++)
			if (parse_cidr(items[i], &nl.v[nl.n++]) != 0)
				return config_fail("%s: %s: '%s' is not a CIDR (addr/len)", source,
						   k->name, items[i]);
		*l = nl;
		return 0;
	}
	}
	return config_fail("%s: %s: unhandled type", source, k->name);
}

int
config_init(struct relay_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < NKEYS; i++)
		if (config_set(cfg, config_keys[i].name, config_keys[i].def, "default") != 0)
			return -1;
	return 0;
}

void
config_fini(struct relay_config *cfg)
{
	for (size_t i = 0; i < NKEYS; i++) {
		void *field = (char *)cfg + config_keys[i].off;
		switch (config_keys[i].type) {
		case CT_STRING:
		case CT_LOGLEVEL:
		case CT_CHOICE:
			free(*(char **)field);
			*(char **)field = NULL;
			break;
		case CT_LIST:
		case CT_DOMAINS:
		case CT_TLS_POLICY:
		case CT_TRANSPORT:
			list_free(field);
			break;
		default:
			break;
		}
	}
}

int
config_load_file(struct relay_config *cfg, const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return config_fail("%s: %s", path, strerror(errno));
	char line[CONFIG_VALUE_MAX + 128];
	unsigned lineno = 0;
	size_t total = 0;
	int rc = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		size_t len = strlen(line);
		total += len;
		if (total > CONFIG_FILE_MAX) {
			rc = config_fail("%s: file larger than %d bytes", path, CONFIG_FILE_MAX);
			break;
		}
		if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
			rc = config_fail("%s:%u: line too long", path, lineno);
			break;
		}
		char *hash = strchr(line, '#');
		if (hash != NULL)
			*hash = '\0';
		char *s = trim(line);
		if (*s == '\0')
			continue;
		char *eq = strchr(s, '=');
		if (eq == NULL) {
			rc = config_fail("%s:%u: expected 'key = value'", path, lineno);
			break;
		}
		*eq = '\0';
		char *key = trim(s), *val = trim(eq + 1);
		if (strchr(key, '-') != NULL) {
			rc = config_fail("%s:%u: unknown configuration key '%s' (file keys use "
					 "underscores)",
					 path, lineno, key);
			break;
		}
		char src[600];
		snprintf(src, sizeof(src), "%s:%u", path, lineno);
		if (config_set(cfg, key, val, src) != 0) {
			rc = -1;
			break;
		}
	}
	if (rc == 0 && ferror(f))
		rc = config_fail("%s: read error", path);
	fclose(f);
	return rc;
}

int
config_load_env(struct relay_config *cfg, char **envp)
{
	static const char prefix[] = "RELAYD_";
	for (char **e = envp; e != NULL && *e != NULL; e++) {
		if (strncmp(*e, prefix, sizeof(prefix) - 1) != 0)
			continue;
		const char *eq = strchr(*e, '=');
		if (eq == NULL)
			continue;
		char name[80];
		size_t n = (size_t)(eq - *e) - (sizeof(prefix) - 1);
		if (n == 0 || n >= sizeof(name))
			return config_fail("environment: unknown configuration variable '%.*s'",
					   (int)(eq - *e), *e);
		memcpy(name, *e + sizeof(prefix) - 1, n);
		name[n] = '\0';
		char src[120];
		snprintf(src, sizeof(src), "environment RELAYD_%s", name);
		if (config_find(name) == NULL)
			return config_fail("%s: unknown configuration key '%s'", src, name);
		if (config_set(cfg, name, eq + 1, src) != 0)
			return -1;
	}
	return 0;
}

int
config_parse_route(const char *text, struct config_route *out)
{
	struct config_route r;
	memset(&r, 0, sizeof(r));
	r.port = 25;
	const char *p = text, *end;
	if (*p == '[') {
		end = strchr(p, ']');
		if (end == NULL || end == p + 1)
			return -1;
		r.no_mx = true;
		if ((size_t)(end - p - 1) >= sizeof(r.host))
			return -1;
		memcpy(r.host, p + 1, (size_t)(end - p - 1));
		p = end + 1;
		if (*p != '\0' && *p != ':')
			return -1;
	} else {
		end = strrchr(p, ':');
		size_t hl = end ? (size_t)(end - p) : strlen(p);
		if (hl == 0 || hl >= sizeof(r.host))
			return -1;
		memcpy(r.host, p, hl);
		p += hl;
	}
	if (*p == ':') {
		uint64_t port;
		if (parse_number(p + 1, &port, (const char *const[]){NULL}, NULL, 1) != 0 ||
		    port == 0 || port > 65535)
			return -1;
		r.port = (unsigned)port;
	}
	struct in6_addr a6;
	struct in_addr a4;
	bool literal = inet_pton(AF_INET, r.host, &a4) == 1 || inet_pton(AF_INET6, r.host, &a6) == 1;
	if (!literal && !valid_domain(r.host))
		return -1;
	if (literal)
		r.no_mx = true; /* an address has no MX */
	for (char *q = r.host; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	if (out != NULL)
		*out = r;
	return 0;
}

static bool
valid_node_id(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("-_.", s[i]))
			return false;
	return true;
}

int
config_admin_socket_path(const struct relay_config *cfg, char *out, size_t cap)
{
	int n;
	if (cfg->admin_socket[0] == '\0')
		return -1;
	if (cfg->admin_socket[0] == '/')
		n = snprintf(out, cap, "%s", cfg->admin_socket);
	else
		n = snprintf(out, cap, "%s/%s", cfg->data_dir, cfg->admin_socket);
	return n < 0 || (size_t)n >= cap || (size_t)n >= CONFIG_SOCKET_PATH_MAX ? -1 : 0;
}

/* 127.0.0.0/8, ::1 or a v4-mapped loopback. */
static bool
addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family != AF_INET6)
		return false;
	const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
	return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

/* 0.0.0.0, :: (listen on every address: no address to give others). */
static bool
addr_is_wildcard(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
	return sa->sa_family == AF_INET6 &&
	       IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
}

bool
config_valid_hostname(const char *name)
{
	size_t n = strlen(name), label = 0;
	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c == '.') {
			if (label == 0 || name[i - 1] == '-')
				return false;
			label = 0;
		} else if (isalnum(c) || (c == '-' && label > 0)) {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0 && name[n - 1] != '-';
}

void
config_client_key(const struct sockaddr *sa, unsigned v4_prefix, unsigned v6_prefix, char *out)
{
	uint8_t a[16] = {0};
	int family = sa->sa_family;
	unsigned bits;
	if (family == AF_INET) {
		memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		memcpy(a, &s6->sin6_addr, 16);
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			family = AF_INET;
			memmove(a, a + 12, 4);
			memset(a + 4, 0, 12);
		}
	} else {
		snprintf(out, CONFIG_CLIENT_KEY_MAX, "-");
		return;
	}
	unsigned max = family == AF_INET ? 32 : 128;
	bits = family == AF_INET ? v4_prefix : v6_prefix;
	if (bits > max)
		bits = max;
	for (unsigned i = 0; i < max / 8; i++) {
		unsigned keep = bits > i * 8 ? bits - i * 8 : 0;
		if (keep < 8)
			a[i] &= (uint8_t)(0xff00 >> keep);
	}
	char text[INET6_ADDRSTRLEN];
	inet_ntop(family, a, text, sizeof(text));
	if (bits == max)
		snprintf(out, CONFIG_CLIENT_KEY_MAX, "%s", text);
	else
		snprintf(out, CONFIG_CLIENT_KEY_MAX, "%s/%u", text, bits);
}

/* The consensus keys: peers are id=host:port with distinct ids (this node among them, or a
 * node joining the cluster they name);
 * cluster_listen is addr:port; TLS files all or none; heartbeat at most half the election
 * timeout. */
static int
config_check_cluster(const struct relay_config *cfg)
{
	struct config_addr a;
	if (cfg->cluster_listen[0] != '\0' && config_parse_addr(cfg->cluster_listen, &a) != 0)
		return config_fail("cluster_listen: '%s' is not addr:port", cfg->cluster_listen);
	bool self = false;
	for (size_t i = 0; i < cfg->peers.n; i++) {
		const char *p = cfg->peers.v[i], *eq = strchr(p, '=');
		char id[64];
		if (eq == NULL || (size_t)(eq - p) >= sizeof(id))
			return config_fail("peers: '%s' is not id=host:port", p);
		memcpy(id, p, (size_t)(eq - p));
		id[eq - p] = '\0';
		const char *colon = strrchr(eq + 1, ':');
		char *end;
		unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
		if (!valid_node_id(id) || colon == NULL || colon == eq + 1 || *end != '\0' ||
		    port == 0 || port > 65535)
			return config_fail("peers: '%s' is not id=host:port", p);
		for (size_t j = 0; j < i; j++)
			if (strncmp(cfg->peers.v[j], p, (size_t)(eq - p) + 1) == 0)
				return config_fail("peers: id '%s' appears twice", id);
		if (strcmp(id, cfg->node_id) == 0)
			self = true;
	}
	/* a node not in the list joins the cluster the list names (relayctl node add) */
	if (cfg->peers.n >= 2 || (cfg->peers.n == 1 && !self)) {
		if (cfg->cluster_listen[0] == '\0')
			return config_fail("peers: a cluster needs cluster_listen");
		if (cfg->peers.n > 16)
			return config_fail("peers: at most 16 members");
	}
	int tls = (cfg->cluster_ca[0] != '\0') + (cfg->cluster_cert[0] != '\0') +
		  (cfg->cluster_key[0] != '\0');
	if (tls != 0 && tls != 3)
		return config_fail("cluster_ca, cluster_cert and cluster_key: set all or none");
	struct config_addr cl;
	if (cfg->auto_join && (tls != 3 || cfg->cluster_listen[0] == '\0'))
		/* the CA's signature is what admits a node: without TLS anyone could join */
		return config_fail("auto_join: needs a cluster (cluster_listen, peers) with cluster "
				   "TLS (cluster_ca, cluster_cert, cluster_key): without it anyone "
				   "reaching cluster_listen could make itself a member");
	if (cfg->cluster_advertise[0] != '\0') {
		struct config_addr adv;
		const char *colon = strrchr(cfg->cluster_advertise, ':');
		if (colon == NULL || colon == cfg->cluster_advertise || colon[1] == '\0' ||
		    strlen(cfg->cluster_advertise) > 255 || strpbrk(cfg->cluster_advertise, " ,="))
			return config_fail("cluster_advertise: '%s' is not host:port",
					   cfg->cluster_advertise);
		if (config_parse_addr(cfg->cluster_advertise, &adv) == 0 &&
		    addr_is_wildcard((const struct sockaddr *)&adv.ss))
			return config_fail("cluster_advertise: %s is a wildcard address; give "
					   "one the other nodes reach",
					   cfg->cluster_advertise);
	} else if (cfg->auto_join && !self && config_parse_addr(cfg->cluster_listen, &cl) == 0 &&
		   addr_is_wildcard((const struct sockaddr *)&cl.ss)) {
		return config_fail("auto_join: this node is outside `peers` and cluster_listen %s "
				   "is a wildcard address: set cluster_advertise to the host:port "
				   "the members reach it at",
				   cfg->cluster_listen);
	}
	if (tls == 0 && !cfg->cluster_insecure && cfg->cluster_listen[0] != '\0' &&
	    config_parse_addr(cfg->cluster_listen, &cl) == 0 &&
	    !addr_is_loopback((const struct sockaddr *)&cl.ss))
		/* G5: a plain cluster port takes Accept commands from anyone who reaches it */
		return config_fail("cluster_listen: %s is not a loopback address and cluster TLS "
				   "is off (cluster_ca/cluster_cert/cluster_key): anyone reaching "
				   "the port could inject mail; set the TLS keys, or "
				   "cluster_insecure = yes on a trusted network",
				   cfg->cluster_listen);
	if (cfg->heartbeat_interval_ms * 2 > cfg->election_timeout_ms)
		return config_fail("heartbeat_interval: at most half the election_timeout");
	return 0;
}

/* Outbound TLS: one level per domain (tls_policy or tls_required_domains, not both), a
 * readable tls_ca_file. */
static int
config_check_tls_out(const struct relay_config *cfg)
{
	for (size_t i = 0; i < cfg->tls_policy.n; i++) {
		const char *e = cfg->tls_policy.v[i];
		size_t dl = (size_t)(strchr(e, '=') - e);
		for (size_t j = 0; j < i; j++)
			if (strncmp(cfg->tls_policy.v[j], e, dl + 1) == 0)
				return config_fail("tls_policy: domain '%.*s' appears twice", (int)dl,
						   e);
		for (size_t j = 0; j < cfg->tls_required_domains.n; j++)
			if (strlen(cfg->tls_required_domains.v[j]) == dl &&
			    strncmp(cfg->tls_required_domains.v[j], e, dl) == 0)
				return config_fail("tls_policy: domain '%.*s' is in "
						   "tls_required_domains too (that means "
						   "%.*s=encrypt): keep one",
						   (int)dl, e, (int)dl, e);
	}
	if (cfg->tls_ca_file[0] != '\0' && access(cfg->tls_ca_file, R_OK) != 0)
		return config_fail("tls_ca_file: cannot read '%s': %s", cfg->tls_ca_file,
				   strerror(errno));
	return 0;
}

/* dkim_keys entries are domain:selector:keyfile; dkim_headers entries are field names. */
static int
config_check_dkim(const struct relay_config *cfg)
{
	for (size_t i = 0; i < cfg->dkim_keys.n; i++) {
		const char *e = cfg->dkim_keys.v[i];
		const char *c1 = strchr(e, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		char dom[256], sel[64];
		if (c1 == NULL || c2 == NULL || c2[1] == '\0' || (size_t)(c1 - e) >= sizeof(dom) ||
		    (size_t)(c2 - c1 - 1) >= sizeof(sel) || c2 == c1 + 1)
			return config_fail("dkim_keys: '%s' is not domain:selector:keyfile", e);
		memcpy(dom, e, (size_t)(c1 - e));
		dom[c1 - e] = '\0';
		memcpy(sel, c1 + 1, (size_t)(c2 - c1 - 1));
		sel[c2 - c1 - 1] = '\0';
		for (char *p = dom; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		if (!valid_domain(dom))
			return config_fail("dkim_keys: '%s': '%s' is not a domain", e, dom);
		/* a selector is one or more DNS labels (RFC 6376 3.1) */
		for (const char *p = sel; *p; p++)
			if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
				return config_fail("dkim_keys: '%s': '%s' is not a selector (letters, "
						   "digits, '-', '_', '.')", e, sel);
		if (sel[0] == '.' || sel[strlen(sel) - 1] == '.' || strstr(sel, ".."))
			return config_fail("dkim_keys: '%s': '%s' is not a selector", e, sel);
	}
	if (cfg->dkim_headers.n > 64)
		return config_fail("dkim_headers: more than 64 names");
	for (size_t i = 0; i < cfg->dkim_headers.n; i++) {
		const char *h = cfg->dkim_headers.v[i];
		size_t n = strlen(h);
		bool ok = n > 0 && n <= 64;
		/* a field name: printable ASCII but ':' (RFC 5322 3.6.8) */
		for (size_t j = 0; ok && j < n; j++)
			ok = h[j] > 32 && h[j] < 127 && h[j] != ':';
		if (!ok)
			return config_fail("dkim_headers: '%s' is not a header field name", h);
		if (strcasecmp(h, "dkim-signature") == 0)
			return config_fail("dkim_headers: DKIM-Signature is never signed");
	}
	return 0;
}

int
config_check(const struct relay_config *cfg)
{
	if (cfg->node_id[0] != '\0' && !valid_node_id(cfg->node_id))
		return config_fail("node_id: '%s' must be 1-63 of letters, digits, '-', '_', '.'",
				   cfg->node_id);
	if (cfg->data_dir[0] == '\0')
		return config_fail("data_dir: must not be empty");
	if (cfg->http_listen.n > 1)
		return config_fail("http_listen: one address only");
	if (cfg->admin_listen.n > 1)
		return config_fail("admin_listen: one address only");
	if (cfg->admin_ca[0] != '\0' && (cfg->cluster_cert[0] == '\0' || cfg->cluster_key[0] == '\0'))
		return config_fail("admin_ca: the admin endpoint's TLS needs this node's certificate "
				   "too (cluster_ca, cluster_cert, cluster_key)");
	if (cfg->admin_listen.n == 1 && cfg->admin_ca[0] == '\0' &&
	    !addr_is_loopback((const struct sockaddr *)&cfg->admin_listen.v[0].ss))
		/* G5: the admin port takes authenticated peers only; without admin TLS that means
		 * nobody but this host (with it: relayctl's certificate of admin_ca) */
		return config_fail("admin_listen: %s is not a loopback address; the admin endpoint "
				   "has no authentication without admin_ca (or use admin_socket)",
				   cfg->admin_listen.v[0].text);
	if (cfg->hostname[0] != '\0' && !config_valid_hostname(cfg->hostname))
		return config_fail("hostname: '%s' is not a domain name (letters, digits, '-' and "
				   "'.'; labels of 1-63, at most 253)",
				   cfg->hostname);
	if (cfg->postmaster_address[0] != '\0' && !mailbox_valid(cfg->postmaster_address, 0))
		return config_fail("postmaster_address: '%s' is not an address (local@domain)",
				   cfg->postmaster_address);
	char sock[CONFIG_SOCKET_PATH_MAX];
	if (cfg->admin_socket[0] != '\0' && config_admin_socket_path(cfg, sock, sizeof(sock)) != 0)
		return config_fail("admin_socket: the path '%s%s%s' is longer than %d bytes (a unix "
				   "socket's limit): use a shorter one",
				   cfg->admin_socket[0] == '/' ? "" : cfg->data_dir,
				   cfg->admin_socket[0] == '/' ? "" : "/", cfg->admin_socket,
				   CONFIG_SOCKET_PATH_MAX - 1);
	if (cfg->max_receive_memory < cfg->max_message_size)
		return config_fail("max_receive_memory: %llu is less than max_message_size (%llu): "
				   "no message of the largest size could be received",
				   (unsigned long long)cfg->max_receive_memory,
				   (unsigned long long)cfg->max_message_size);
	if (cfg->smtp_listen.n == 0)
		return config_fail("smtp_listen: at least one address is needed");
	if ((cfg->tls_cert[0] == '\0') != (cfg->tls_key[0] == '\0'))
		return config_fail("tls_cert and tls_key: set both or neither");
	if (cfg->auth_users_file[0] != '\0' && cfg->tls_cert[0] == '\0')
		return config_fail("auth_users_file: AUTH is offered only after STARTTLS, so "
				   "tls_cert and tls_key are needed too");
	if (config_check_dkim(cfg) != 0)
		return -1;
	if (cfg->sender_permissions_file[0] != '\0' && cfg->auth_users_file[0] == '\0')
		return config_fail("sender_permissions_file: needs auth_users_file (it says what "
				   "each AUTH user may send as)");
	if (cfg->relayhost[0] != '\0' && config_parse_route(cfg->relayhost, NULL) != 0)
		return config_fail("relayhost: '%s' is not host[:port] or [host]:port",
				   cfg->relayhost);
	for (size_t i = 0; i < cfg->transport.n; i++)
		if (config_parse_route(strchr(cfg->transport.v[i], '=') + 1, NULL) != 0)
			return config_fail("transport: '%s' is not domain=host:port",
					   cfg->transport.v[i]);
	if (cfg->retry_max_ms < cfg->retry_base_ms)
		return config_fail("retry_max: must be at least retry_base");
	if (config_check_tls_out(cfg) != 0)
		return -1;
	return config_check_cluster(cfg);
}

static const char *
type_name(enum config_type t)
{
	switch (t) {
	case CT_STRING:
		return "string";
	case CT_UINT:
		return "integer";
	case CT_SIZE:
		return "size";
	case CT_DURATION:
		return "duration";
	case CT_LIST:
		return "list";
	case CT_DOMAINS:
		return "domain list";
	case CT_ADDRS:
		return "addr:port list";
	case CT_CIDRS:
		return "CIDR list";
	case CT_TRANSPORT:
		return "domain=host:port list";
	case CT_LOGLEVEL:
		return "level";
	case CT_BOOL:
		return "yes/no";
	case CT_TLS_POLICY:
		return "domain=level list";
	case CT_CHOICE:
		return "choice";
	}
	return "?";
}

void
config_print_table(FILE *out)
{
	fprintf(out, "| key (file) | flag | type | default | meaning |\n");
	fprintf(out, "|---|---|---|---|---|\n");
	for (size_t i = 0; i < NKEYS; i++) {
		char flag[64];
		snprintf(flag, sizeof(flag), "--%s", config_keys[i].name);
		for (char *p = flag + 2; *p; p++)
			if (*p == '_')
				*p = '-';
		char def[CONFIG_VALUE_MAX];
		if (config_keys[i].def[0] == '\0')
			snprintf(def, sizeof(def), "(empty)");
		else
			snprintf(def, sizeof(def), "`%s`", config_keys[i].def);
		fprintf(out, "| `%s` | `%s` | %s | %s | %s |\n", config_keys[i].name, flag,
			type_name(config_keys[i].type), def, config_keys[i].help);
	}
}

void
config_print(const struct relay_config *cfg, FILE *out)
{
	for (size_t i = 0; i < NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		const void *field = (const char *)cfg + k->off;
		fprintf(out, "%s = ", k->name);
		switch (k->type) {
		case CT_STRING:
		case CT_LOGLEVEL:
		case CT_CHOICE:
			fprintf(out, "%s", *(char *const *)field);
			break;
		case CT_UINT:
		case CT_SIZE:
			fprintf(out, "%llu", (unsigned long long)*(const uint64_t *)field);
			break;
		case CT_BOOL:
			fprintf(out, "%s", *(const bool *)field ? "yes" : "no");
			break;
		case CT_DURATION:
			fprintf(out, "%llums", (unsigned long long)*(const uint64_t *)field);
			break;
		case CT_LIST:
		case CT_DOMAINS:
		case CT_TLS_POLICY:
		case CT_TRANSPORT: {
			const struct config_list *l = field;
			for (size_t j = 0; j < l->n; j++)
				fprintf(out, "%s%s", j ? ", " : "", l->v[j]);
			break;
		}
		case CT_ADDRS: {
			const struct config_addr_list *l = field;
			for (size_t j = 0; j < l->n; j++)
				fprintf(out, "%s%s", j ? ", " : "", l->v[j].text);
			break;
		}
		case CT_CIDRS: {
			const struct config_cidr_list *l = field;
			for (size_t j = 0; j < l->n; j++) {
				char a[INET6_ADDRSTRLEN];
				inet_ntop(l->v[j].family, l->v[j].addr, a, sizeof(a));
				fprintf(out, "%s%s/%u", j ? ", " : "", a, l->v[j].prefix);
			}
			break;
		}
		}
		fputc('\n', out);
	}
}
