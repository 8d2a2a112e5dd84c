/*
 * relayd.c: the relay node.  Reads the configuration (defaults < --config file < RELAYD_*
 * environment < --key-name=value flags), opens the cluster (the replicated queue), starts the
 * SMTP listeners and runs the libuv loop until SIGTERM or SIGINT.
 *
 * Delivery (delivery.h) runs on the same loop from the start: queued and due mail is resumed.
 *
 * Shutdown: stop accepting, let open sessions finish within shutdown_timeout (then 421 them);
 * meanwhile delivery stops starting jobs and aborts its connections (their recipients stay
 * queued); when both are done, let the cluster finish its write in flight, exit 0.  A second
 * signal exits at once (1).
 *
 * Offline mode: --dump-queue [--json] prints the queue of data_dir and exits (read-only; works
 * while another relayd runs on the same data_dir).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "admin.h"
#include "auth.h"
#include "dkim_sign.h"
#include "senders.h"
#include "cluster.h"
#include "config.h"
#include "http.h"
#include "delivery.h"
#include "log.h"
#include "metrics.h"
#include "smtp_server.h"
#include "tls.h"

#ifndef RELAY_VERSION
#define RELAY_VERSION "0.1.0"
#endif

extern char **environ;

static struct {
	uv_loop_t *loop;
	struct relay_config cfg;
	struct cluster *cluster;
	struct smtp_server *smtp;
	struct delivery *delivery;
	int stopping_parts; /* smtp server and delivery still stopping */
	struct tls_ctx *tls;
	struct auth_table *auth;     /* handed to the smtp server (it owns it then) */
	struct sender_table *senders; /* likewise */
	struct dkim_signer *dkim;     /* likewise */
	struct http *http;
	struct admin *admin;
	struct metrics_sources msrc;
	uv_signal_t sigterm, sigint, sighup;
	int stopping;
	int exit_code;
} relayd;

static void
usage(FILE *out)
{
	fprintf(out,
		"usage: relayd [--config FILE] [--key-name=value ...]\n"
		"       relayd [--config FILE] [--data-dir=DIR] --dump-queue [--json]\n"
		"       relayd --help-config | --print-config | --version | --help\n"
		"\n"
		"Every configuration key is also a flag: file key max_message_size is\n"
		"--max-message-size=VALUE; environment RELAYD_MAX_MESSAGE_SIZE=VALUE.\n"
		"Flags override the environment, which overrides the file.\n"
		"--help-config prints every key with its default.\n");
}

static void
close_walk_cb(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void
cluster_closed_cb(void *arg)
{
	log_info("-", "event=stopped");
	uv_walk(relayd.loop, close_walk_cb, NULL);
}

static void
part_stopped(void)
{
	if (--relayd.stopping_parts > 0)
		return;
	cluster_close(relayd.cluster, cluster_closed_cb, NULL);
	relayd.cluster = NULL;
}

static void
smtp_stopped_cb(void *arg)
{
	relayd.smtp = NULL;
	relayd.msrc.smtp = NULL;
	relayd.msrc.cluster = NULL;
	http_stop(relayd.http);
	relayd.http = NULL;
	part_stopped();
}

static void
admin_stopped_cb(void *arg)
{
	relayd.admin = NULL;
	part_stopped();
}

static void
delivery_stopped_cb(void *arg)
{
	relayd.delivery = NULL;
	part_stopped();
}

/* SIGHUP: re-read the user and sender tables; sessions stay up (smtp_server_reload). */
static void
sighup_cb(uv_signal_t *h, int signum)
{
	log_info("-", "event=signal signal=HUP action=reload");
	if (relayd.smtp != NULL && !relayd.stopping)
		smtp_server_reload(relayd.smtp);
}

static void
signal_cb(uv_signal_t *h, int signum)
{
	if (relayd.stopping) {
		log_warn("-", "event=signal signal=%d action=exit-now", signum);
		_exit(1);
	}
	relayd.stopping = 1;
	relayd.msrc.stopping = true;
	log_info("-", "event=shutdown signal=%s timeout=%llums",
		 signum == SIGTERM ? "TERM" : "INT",
		 (unsigned long long)relayd.cfg.shutdown_timeout_ms);
	relayd.stopping_parts = relayd.admin != NULL ? 3 : 2;
	if (relayd.admin != NULL)
		admin_stop(relayd.admin, admin_stopped_cb, NULL);
	relayd.msrc.delivery = NULL; /* freed by the close below */
	delivery_close(relayd.delivery, delivery_stopped_cb, NULL);
	smtp_server_shutdown(relayd.smtp, smtp_stopped_cb, NULL);
}

/* "--key-name=value" -> config; returns 0, -1 (error printed), 1 (not a key flag). */
static int
apply_flag(const char *arg)
{
	const char *eq = strchr(arg, '=');
	char name[80];
	size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
	if (n == 0 || n >= sizeof(name)) {
		fprintf(stderr, "relayd: unknown option '%s' (see --help)\n", arg);
		return -1;
	}
	memcpy(name, arg + 2, n);
	name[n] = '\0';
	if (strchr(name, '_') != NULL) {
		fprintf(stderr, "relayd: unknown option '--%s' (flags use dashes: --%s)\n", name,
			name);
		return -1;
	}
	if (eq == NULL) {
		fprintf(stderr, "relayd: option '--%s' needs a value: --%s=VALUE\n", name, name);
		return -1;
	}
	char src[120];
	snprintf(src, sizeof(src), "flag --%s", name);
	if (config_set(&relayd.cfg, name, eq + 1, src) != 0) {
		fprintf(stderr, "relayd: %s\n", config_error());
		return -1;
	}
	return 0;
}

static int
default_name(char **field)
{
	if ((*field)[0] != '\0')
		return 0;
	char host[256];
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "relayd");
	host[sizeof(host) - 1] = '\0';
	free(*field);
	*field = strdup(host);
	return *field ? 0 : -1;
}

int
main(int argc, char **argv)
{
	const char *config_file = NULL;
	int dump = 0, json = 0, print_config = 0;

	signal(SIGPIPE, SIG_IGN);
	if (config_init(&relayd.cfg) != 0) {
		fprintf(stderr, "relayd: %s\n", config_error());
		return 2;
	}
	/* Pass 1: modes and the config file. */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--version") == 0) {
			printf("relayd %s\n", RELAY_VERSION);
			return 0;
		} else if (strcmp(a, "--help-config") == 0) {
			config_print_table(stdout);
			return 0;
		} else if (strcmp(a, "--config") == 0) {
			if (i + 1 == argc) {
				fprintf(stderr, "relayd: --config needs a file\n");
				return 2;
			}
			config_file = argv[++i];
		} else if (strncmp(a, "--config=", 9) == 0) {
			config_file = a + 9;
		} else if (strcmp(a, "--dump-queue") == 0) {
			dump = 1;
		} else if (strcmp(a, "--json") == 0) {
			json = 1;
		} else if (strcmp(a, "--print-config") == 0) {
			print_config = 1;
		} else if (strncmp(a, "--", 2) != 0) {
			fprintf(stderr, "relayd: unexpected argument '%s' (see --help)\n", a);
			return 2;
		}
	}
	if (config_file != NULL && config_load_file(&relayd.cfg, config_file) != 0) {
		fprintf(stderr, "relayd: %s\n", config_error());
		return 2;
	}
	if (config_load_env(&relayd.cfg, environ) != 0) {
		fprintf(stderr, "relayd: %s\n", config_error());
		return 2;
	}
	/* Pass 2: key flags override everything. */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--config") == 0) {
			i++;
			continue;
		}
		if (strncmp(a, "--config=", 9) == 0 || strcmp(a, "--dump-queue") == 0 ||
		    strcmp(a, "--json") == 0 || strcmp(a, "--print-config") == 0)
			continue;
		if (apply_flag(a) != 0)
			return 2;
	}
	if (default_name(&relayd.cfg.node_id) != 0 || default_name(&relayd.cfg.hostname) != 0 ||
	    config_check(&relayd.cfg) != 0) {
		fprintf(stderr, "relayd: %s\n", config_error());
		return 2;
	}
	if (print_config) {
		config_print(&relayd.cfg, stdout);
		return 0;
	}
	if (dump) {
		int rc = cluster_dump_queue(relayd.cfg.data_dir, stdout, json);
		if (rc != 0) {
			fprintf(stderr, "relayd: --dump-queue %s: %s\n", relayd.cfg.data_dir,
				cluster_strerror(rc));
			return 1;
		}
		return 0;
	}
	log_setup(relayd.cfg.node_id, relayd.cfg.log_level);

	char err[512];
	if (tls_ciphers_check(relayd.cfg.tls_ciphers, err, sizeof(err)) != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 2;
	}
	if (relayd.cfg.tls_cert[0] != '\0' &&
	    tls_ctx_new(relayd.cfg.tls_cert, relayd.cfg.tls_key, relayd.cfg.tls_ciphers, &relayd.tls,
			err, sizeof(err)) != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 2;
	}
	if (relayd.cfg.auth_users_file[0] != '\0' &&
	    auth_table_load(relayd.cfg.auth_users_file, &relayd.auth, err, sizeof(err)) != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 2;
	}
	if (dkim_signer_new(&relayd.cfg, &relayd.dkim, err, sizeof(err)) != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 2;
	}
	if (relayd.cfg.sender_permissions_file[0] != '\0' &&
	    sender_table_load(relayd.cfg.sender_permissions_file, &relayd.senders, err,
			      sizeof(err)) != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 2;
	}

	/* Everything relayd creates is its user's alone: the RocksDB files (queue, bodies, Raft
	 * log), the admin socket, snapshots (issue 12 sec. 5).  The data directory too, even one
	 * an older version created with the default mode. */
	umask(077);

	relayd.loop = uv_default_loop();
	uint64_t t0 = uv_hrtime();
	struct cluster_config ccfg = {
	    .node_id = relayd.cfg.node_id,
	    .data_dir = relayd.cfg.data_dir,
	    .max_pending = (unsigned)relayd.cfg.max_pending_proposals,
	    /* one message (body, envelope of up to max_recipients, Received:) must fit a write */
	    .max_batch_bytes = CLUSTER_DEFAULT_MAX_BATCH_BYTES > relayd.cfg.max_message_size + (4u << 20)
				   ? CLUSTER_DEFAULT_MAX_BATCH_BYTES
				   : relayd.cfg.max_message_size + (4u << 20),
	    /* replicated mode when cluster_listen and two peers or more are set */
	    .cluster_listen = relayd.cfg.cluster_listen,
	    .peers = (const char *const *)relayd.cfg.peers.v,
	    .n_peers = relayd.cfg.peers.n,
	    .cluster_ca = relayd.cfg.cluster_ca,
	    .cluster_cert = relayd.cfg.cluster_cert,
	    .cluster_key = relayd.cfg.cluster_key,
	    .election_timeout_ms = (unsigned)relayd.cfg.election_timeout_ms,
	    .heartbeat_ms = (unsigned)relayd.cfg.heartbeat_interval_ms,
	    .snapshot_entries = (unsigned)relayd.cfg.snapshot_entries,
	    .auto_join = relayd.cfg.auto_join,
	    .cluster_advertise = relayd.cfg.cluster_advertise,
	    /* the session answers 451 at propose_timeout; the cluster gives up at the same bound */
	    .propose_fail_ms = (unsigned)relayd.cfg.propose_timeout_ms,
	};
	int rc = cluster_open(relayd.loop, &ccfg, &relayd.cluster);
	if (rc != 0) {
		fprintf(stderr, "relayd: cannot open the queue in %s: %s\n", relayd.cfg.data_dir,
			cluster_strerror(rc));
		return 1;
	}
	if (chmod(relayd.cfg.data_dir, 0700) != 0)
		log_warn("-", "event=data-dir-mode data_dir=%s error=\"%s\"", relayd.cfg.data_dir,
			 strerror(errno));
	struct cluster_stats st;
	cluster_stats(relayd.cluster, &st);
	log_info("-", "event=queue-open data_dir=%s messages=%llu applied_index=%llu open_ms=%llu",
		 relayd.cfg.data_dir, (unsigned long long)st.messages,
		 (unsigned long long)st.applied_index,
		 (unsigned long long)((uv_hrtime() - t0) / 1000000));

	/* Handle SIGTERM/SIGINT before the first listener opens: a node that accepts connections
	 * stops cleanly (exit 0) on SIGTERM, even one sent while the other parts still start.
	 * signal_cb runs only from the loop, once everything below has started. */
	uv_signal_init(relayd.loop, &relayd.sigterm);
	uv_signal_init(relayd.loop, &relayd.sigint);
	uv_signal_start(&relayd.sigterm, signal_cb, SIGTERM);
	uv_signal_start(&relayd.sigint, signal_cb, SIGINT);
	size_t auth_users = auth_table_count(relayd.auth);
	rc = smtp_server_start(relayd.loop, &relayd.cfg, relayd.cluster, relayd.tls, relayd.auth,
			       relayd.senders, &relayd.smtp, err, sizeof(err));
	relayd.auth = NULL; /* the server owns them now */
	relayd.senders = NULL;
	if (rc == 0)
		smtp_server_set_dkim(relayd.smtp, relayd.dkim);
	else
		dkim_signer_free(relayd.dkim);
	relayd.dkim = NULL;
	if (rc != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 1;
	}
	rc = delivery_start(relayd.loop, &relayd.cfg, relayd.cluster, &relayd.delivery, err,
			    sizeof(err));
	if (rc != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 1;
	}
	relayd.msrc.smtp = relayd.smtp;
	relayd.msrc.cluster = relayd.cluster;
	relayd.msrc.delivery = relayd.delivery;
	relayd.msrc.node_id = relayd.cfg.node_id;
	if (relayd.cfg.http_listen.n > 0 &&
	    http_start(relayd.loop, (const struct sockaddr *)&relayd.cfg.http_listen.v[0].ss,
		       metrics_fill, &relayd.msrc, &relayd.http, err, sizeof(err)) != 0) {
		fprintf(stderr, "relayd: %s on %s\n", err, relayd.cfg.http_listen.v[0].text);
		return 1;
	}
	char admin_sock[CONFIG_SOCKET_PATH_MAX];
	bool admin_tls = relayd.cfg.admin_ca[0] != '\0';
	bool has_sock = config_admin_socket_path(&relayd.cfg, admin_sock, sizeof(admin_sock)) == 0;
	if ((relayd.cfg.admin_listen.n > 0 || has_sock) &&
	    admin_start(relayd.loop, &relayd.cfg, admin_tls ? relayd.cfg.admin_ca : NULL,
			admin_tls ? relayd.cfg.cluster_cert : NULL,
			admin_tls ? relayd.cfg.cluster_key : NULL, has_sock ? admin_sock : NULL,
			relayd.cluster, &relayd.admin, err, sizeof(err)) != 0) {
		fprintf(stderr, "relayd: %s\n", err);
		return 1;
	}
	uv_signal_init(relayd.loop, &relayd.sighup);
	uv_signal_start(&relayd.sighup, sighup_cb, SIGHUP);
	for (size_t i = 0; i < relayd.cfg.smtp_listen.n; i++)
		log_info("-", "event=listening smtp=%s", relayd.cfg.smtp_listen.v[i].text);
	if (relayd.http != NULL)
		log_info("-", "event=listening http=%s", relayd.cfg.http_listen.v[0].text);
	if (relayd.admin != NULL && relayd.cfg.admin_listen.n > 0)
		log_info("-", "event=listening admin=%s tls=%s", relayd.cfg.admin_listen.v[0].text,
			 admin_tls ? "yes" : "no");
	if (relayd.admin != NULL && has_sock)
		log_info("-", "event=listening admin_socket=%s", admin_sock);
	log_info("-", "event=started version=%s node_id=%s hostname=%s data_dir=%s tls=%s auth_users=%zu",
		 RELAY_VERSION, relayd.cfg.node_id, relayd.cfg.hostname, relayd.cfg.data_dir,
		 relayd.tls ? "yes" : "no", auth_users);

	uv_run(relayd.loop, UV_RUN_DEFAULT);
	uv_loop_close(relayd.loop);
	tls_ctx_free(relayd.tls);
	config_fini(&relayd.cfg);
	return relayd.exit_code;
}
