/*
 * config.h: relayd's configuration, one table of keys.
 *
 * Every key has one name, a type, a default and a one-line description (config.c's table).
 * Sources, later ones win: the built-in defaults, the file given with --config (lines
 * "key = value", '#' comments), the environment (RELAYD_KEY_NAME=value, for containers), and the
 * command line (--key-name=value).  File keys use underscores, flags dashes.  An unknown key or a
 * bad value is an error that names the key and the source; the caller prints it and exits.
 *
 * Types: string; integer; size (bytes, optional k/m/g suffix, powers of 1024); duration
 * (ms/s/m/h/d suffix, a bare number is seconds); list (comma or blank separated); address list
 * (host:port, IPv6 as [addr]:port); CIDR list (addr/len, a bare address is a host route).
 */
#ifndef RELAY_CONFIG_H
#define RELAY_CONFIG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define CONFIG_LIST_MAX 64      /* entries in one list value */
#define CONFIG_VALUE_MAX 4096   /* bytes in one value */
#define CONFIG_FILE_MAX (1 << 20)

/* The levels of tls_policy, weakest first (node/delivery/tls_policy.h parses the same names;
 * its unit test checks that they agree). */
#define CONFIG_TLS_LEVELS "may", "encrypt", "verify", "dane", "dane-only"

struct config_list {
	size_t n;
	char *v[CONFIG_LIST_MAX]; /* owned */
};

struct config_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char text[80]; /* as "host:port" / "[v6]:port" */
};

struct config_addr_list {
	size_t n;
	struct config_addr v[CONFIG_LIST_MAX];
};

struct config_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};

struct config_cidr_list {
	size_t n;
	struct config_cidr v[CONFIG_LIST_MAX];
};

struct relay_config {
	char *node_id;
	char *hostname;
	char *data_dir;
	struct config_addr_list own_addresses; /* NAT / balancer addresses that reach us */
	char *postmaster_address;	       /* "" : RCPT TO:<postmaster> is refused */
	char *bounce_content;		       /* "headers" or "full" (untrusted clients) */
	uint64_t max_hops;		       /* Received: headers that mean a loop */
	uint64_t max_receive_memory;	       /* node-wide body + proposal budget, bytes */
	struct config_addr_list smtp_listen;
	struct config_cidr_list mynetworks;
	struct config_addr_list http_listen;
	struct config_addr_list admin_listen;
	char *admin_socket; /* "" off; relative to data_dir */
	char *admin_ca;	    /* relayctl's CA on admin_listen */
	struct config_cidr_list proxy_from; /* load balancers whose PROXY header we believe */
	struct config_list relay_domains; /* lowercased */
	struct config_addr_list dns_servers;
	char *relayhost;
	struct config_list transport; /* domain=host:port */
	uint64_t max_message_size;
	uint64_t max_recipients;
	char *tls_cert;
	char *tls_key;
	char *tls_ciphers; /* OpenSSL cipher list, TLS 1.2 */
	char *auth_users_file;
	uint64_t auth_failures_per_minute_per_client;
	uint64_t max_concurrent_auth;
	char *sender_permissions_file; /* user: pattern, ... ("": any sender) */
	uint64_t max_messages_per_hour_per_user;   /* 0: no quota */
	uint64_t max_messages_per_hour_per_client; /* 0: no quota */
	struct config_list dkim_keys;    /* domain:selector:keyfile */
	bool dkim_sign_subdomains;
	struct config_list dkim_headers; /* empty: DKIM_DEFAULT_HEADERS */
	uint64_t max_line_length;
	uint64_t max_errors;
	uint64_t command_timeout_ms;
	uint64_t data_timeout_ms;
	uint64_t data_total_timeout_ms;
	uint64_t min_data_rate; /* bytes/s; 0: no check */
	uint64_t max_connections;
	uint64_t max_connections_per_client;
	uint64_t client_ipv4_prefix; /* clients grouped by prefix (limits) */
	uint64_t client_ipv6_prefix;
	uint64_t shutdown_timeout_ms;
	uint64_t propose_timeout_ms;
	uint64_t max_pending_proposals;
	char *log_level;
	/* delivery */
	uint64_t lease_ms;	   /* delivery ownership lease (cluster/ownership.h) */
	uint64_t drain_timeout_ms; /* relayctl drain: bound on attempts in flight */
	uint64_t retry_base_ms;
	uint64_t retry_max_ms;
	uint64_t queue_lifetime_ms;
	uint64_t delay_warning_time_ms; /* 0: no delay DSN */
	uint64_t max_deliveries;
	uint64_t max_connections_per_destination;
	uint64_t max_messages_per_minute_per_destination; /* 0: no limit */
	uint64_t max_messages_per_connection;
	struct config_list tls_required_domains; /* lowercased */
	uint64_t connect_timeout_ms;
	uint64_t delivery_attempt_timeout_ms; /* total of one attempt (mta_session.h deadlines) */
	/* outbound TLS (node/delivery/tls_policy.h) */
	struct config_list tls_policy; /* domain=level, lowercased; level in CONFIG_TLS_LEVELS */
	char *tls_ca_file;	       /* "": the system store */
	bool dns_dnssec_trusted;       /* dns_servers validate DNSSEC: their AD bit is believed */
	bool mta_sts;		       /* look up and apply MTA-STS policies (RFC 8461) */
	/* consensus (cluster/cluster.h replicated mode) */
	char *cluster_listen;	  /* "addr:port"; "": single node */
	struct config_list peers; /* id=host:port, this node included */
	char *cluster_ca;
	bool cluster_insecure; /* plain cluster_listen off loopback allowed */
	bool auto_join;	       /* members admit a CA-certified new node (README) */
	char *cluster_advertise; /* host:port the others reach cluster_listen at ("": it) */
	char *cluster_cert;
	char *cluster_key;
	uint64_t election_timeout_ms;
	uint64_t heartbeat_interval_ms;
	uint64_t snapshot_entries;
};

/* A delivery route: relayhost or a transport target.  "[host]:port" (or an IP address) means
 * no MX lookup, as in Postfix; "host[:port]" looks up host's MX.  port defaults to 25. */
struct config_route {
	char host[256]; /* lowercased, without brackets */
	unsigned port;
	bool no_mx;
};

/* Parses a route (see struct config_route).  out may be NULL (validation only).  0 or -1. */
int config_parse_route(const char *text, struct config_route *out);

/* Error text of the last failed call; one line naming the key and the source. */
const char *config_error(void);

/* Fills cfg with the defaults.  Returns 0 or -1 (config_error()). */
int config_init(struct relay_config *cfg);
void config_fini(struct relay_config *cfg);

/* Sets one key from a source ("file:12", "env", "flag").  name may use '_' or '-'. */
int config_set(struct relay_config *cfg, const char *name, const char *value, const char *source);

/* Reads a config file.  Returns 0 or -1. */
int config_load_file(struct relay_config *cfg, const char *path);

/* Applies RELAYD_* environment variables.  Returns 0 or -1. */
int config_load_env(struct relay_config *cfg, char **envp);

/* Checks cross-key rules (tls_cert with tls_key, ...).  Returns 0 or -1. */
int config_check(const struct relay_config *cfg);

/* Is the address in the CIDR list? */
int config_cidr_match(const struct config_cidr_list *l, const struct sockaddr *sa);

/* The client an address belongs to for per-client limits: the address cut to v4_prefix (IPv4,
 * v4-mapped IPv6 included) or v6_prefix bits, as text ("192.0.2.0/24", "2001:db8:1:2::/64"; a
 * full-length prefix prints the bare address).  out must hold CONFIG_CLIENT_KEY_MAX bytes. */
#define CONFIG_CLIENT_KEY_MAX 64
void config_client_key(const struct sockaddr *sa, unsigned v4_prefix, unsigned v6_prefix,
		       char *out);

/* admin_socket as a path (relative: inside data_dir) into out.  -1 when admin_socket is off or
 * the path does not fit a unix socket address (CONFIG_SOCKET_PATH_MAX, NUL included). */
#define CONFIG_SOCKET_PATH_MAX 108
int config_admin_socket_path(const struct relay_config *cfg, char *out, size_t cap);

/* A domain name as an SMTP hostname (RFC 5321 Domain: letters, digits, '-' inside labels of
 * 1-63 bytes, '.' between, at most 253). */
bool config_valid_hostname(const char *name);

/* Prints the key table as Markdown (for the README and --help). */
void config_print_table(FILE *out);

/* Prints the effective configuration, "key = value" per line. */
void config_print(const struct relay_config *cfg, FILE *out);

/* Parses "host:port" / "[v6]:port" into an address (numeric only).  Returns 0 or -1. */
int config_parse_addr(const char *text, struct config_addr *out);

/* Parses a duration into milliseconds.  Returns 0 or -1. */
int config_parse_duration(const char *text, uint64_t *ms);

/* Parses a size into bytes.  Returns 0 or -1. */
int config_parse_size(const char *text, uint64_t *bytes);

#endif
