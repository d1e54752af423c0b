/*
 * jwksd: command line, configuration, start and stop.
 */
#include <civetweb.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "accesslog.h"
#include "accounts.h"
#include "admin.h"
#include "cli.h"
#include "jose.h"
#include "jwks_http.h"
#include "keys_cmd.h"
#include "keystore.h"
#include "lifecycle.h"
#include "metrics.h"
#include "service.h"
#include "signer.h"
#include "tls.h"
#include "users_cmd.h"

#ifndef JWKSD_VERSION
#define JWKSD_VERSION "unknown"
#endif

struct main_config {
	const char *listen;
	const char *admin_listen;
	char admin_text[80];
	const char *access_log;
	long long stale_after;
	const char *db;
	const char *backend;
	const char *pg_schema;
	const char *kek_file;
	long long token_ttl;
	long long key_ttl;
	long long jwks_max_age;
	long long margin;
	long long threads;
	long long lmdb_map_size;
	long long max_body;
	long long request_timeout_ms;
	char timeout_text[24];
	/* --alg, split; alg_text holds the names. */
	char alg_text[64];
	const char *algs[JWKS_MAX_ALGS + 1];
	long long rsa_bits;
	const char *issuer;
	const char *audiences[JWKS_MAX_AUDIENCES + 1];
	size_t n_audiences;
	const char *token_type;
	/* Accounts. */
	int login_required;
	struct pw_params argon2;
	long long auth_log_days;
	long long auth_rate;
	long long register_rate;
	const char *proxies[JWKS_MAX_TRUSTED_PROXIES + 1];
	size_t n_proxies;
	/* TLS: the files of each listener, and what was loaded from them. */
	const char *tls_cert;
	const char *tls_key;
	const char *admin_tls_cert;
	const char *admin_tls_key;
	struct jwks_tls *tls;
	struct jwks_tls *admin_tls;
	/* CivetWeb's listening_ports: the address, with "s" for TLS. */
	char listen_ports[96];
	char admin_ports[96];
};

static const char main_usage_text[] =
	"usage: jwksd [--listen ADDR:PORT] [--db PATH] [--backend NAME]\n"
	"             [--pg-schema NAME]\n"
	"             [--token-ttl SECONDS] [--key-ttl SECONDS]\n"
	"             [--jwks-max-age SECONDS] [--margin SECONDS]\n"
	"             [--kek-file PATH] [--threads N] [--lmdb-map-size BYTES]\n"
	"             [--max-body BYTES] [--request-timeout MS]\n"
	"             [--alg LIST] [--rsa-bits N] [--issuer URL]\n"
	"             [--audience AUD]... [--token-type JWT|at+jwt]\n"
	"             [--login open|required] [--argon2 m=KIB,t=N,p=N]\n"
	"             [--auth-rate N] [--register-rate N] [--trust-proxy "
	"CIDR]...\n"
	"             [--auth-log-days N] [--admin-listen [ADDR:]PORT]\n"
	"             [--stale-after SECONDS] [--access-log PATH]\n"
	"             [--tls-cert PEM --tls-key PEM]\n"
	"             [--admin-tls-cert PEM --admin-tls-key PEM]\n"
	"             [--help] [--version]\n"
	"       jwksd copy --from NAME:PATH --to NAME:PATH [--merge]\n"
	"                  [--with-auth-log] [--pg-schema NAME]\n"
	"       jwksd keys list|rotate|revoke KID|export-public|purge|rewrap "
	"...\n"
	"       jwksd users list|add NAME|passwd NAME|lock NAME|unlock NAME|"
	"delete NAME\n"
	"\n"
	"  --listen ADDR:PORT     address to serve on (default "
	"127.0.0.1:8080)\n"
	"  --db PATH              key store (default: the backend's file in\n"
	"                         the current directory)\n"
	"  --backend NAME         key store backend (default sqlite); for\n"
	"                         postgres, --db is a libpq connection string\n"
	"                         or URI (default: libpq's, PG* variables)\n"
	"  --pg-schema NAME       PostgreSQL schema of the tables (default\n"
	"                         jwksd)\n"
	"  --token-ttl SECONDS    lifetime of issued tokens (default 3600)\n"
	"  --key-ttl SECONDS      how long a key is published in all: ahead "
	"of\n"
	"                         signing, signing, then until its last token\n"
	"                         expired (default 86400)\n"
	"  --jwks-max-age SECONDS longest Cache-Control max-age of the JWKS\n"
	"                         (default 300)\n"
	"  --margin SECONDS       safety margin for caches and clocks; a new\n"
	"                         key is published --jwks-max-age + --margin\n"
	"                         before it signs (default 300)\n"
	"  --kek-file PATH        secret that encrypts private keys at rest\n"
	"                         (mode 0600); or set $NOT_MY_KEY\n"
	"  --threads N            worker threads (default 64)\n"
	"  --lmdb-map-size BYTES  LMDB map size, K/M/G suffix allowed\n"
	"                         (default 64M)\n"
	"  --max-body BYTES       largest request body accepted, K/M suffix\n"
	"                         allowed (default 64K; larger: 413)\n"
	"  --request-timeout MS   time allowed to send a request's headers "
	"and\n"
	"                         body, and idle time on a kept-alive\n"
	"                         connection (default 2000)\n"
	"  --alg LIST             signing algorithms, comma-separated, from\n"
	"                         RS256, PS256, ES256, EdDSA; each has its "
	"own\n"
	"                         keys; tokens use the first unless POST\n"
	"                         /auth?alg=NAME asks (default RS256)\n"
	"  --rsa-bits N           size of new RSA keys: 2048, 3072 or 4096\n"
	"                         (default 2048)\n"
	"  --issuer URL           the iss claim, and serve discovery metadata\n"
	"                         at /.well-known/openid-configuration and\n"
	"                         /.well-known/oauth-authorization-server;\n"
	"                         https (http only for localhost/loopback),\n"
	"                         no query or fragment (default: none)\n"
	"  --audience AUD         the aud claim; repeat for several (default:\n"
	"                         none)\n"
	"  --token-type TYPE      JWT, or at+jwt for RFC 9068 access tokens\n"
	"                         (needs --issuer and --audience; default "
	"JWT)\n"
	"  --login MODE           open: a request without valid credentials\n"
	"                         (or naming no user) still gets an anonymous\n"
	"                         token; required: only valid credentials\n"
	"                         (default open)\n"
	"  --argon2 m=KIB,t=N,p=N Argon2id cost of new password hashes, at\n"
	"                         least the default m=19456,t=2,p=1\n"
	"  --auth-rate N          POST /auth requests per client address per\n"
	"                         second (default 10; 0: no limit)\n"
	"  --register-rate N      POST /register requests per client address\n"
	"                         per minute (default 5; 0: no limit)\n"
	"  --trust-proxy CIDR     believe X-Forwarded-For from these peers;\n"
	"                         repeat for several (default: none)\n"
	"  --auth-log-days N      keep auth-log entries N days (default 90;\n"
	"                         0: forever)\n"
	"  --admin-listen [ADDR:]PORT\n"
	"                         serve /metrics, /keys.json and the key\n"
	"                         timeline page on a second listener\n"
	"                         (ADDR 127.0.0.1 when omitted; default: "
	"off)\n"
	"  --stale-after SECONDS  /readyz answers 503 once the store has not\n"
	"                         answered for this long (default 10)\n"
	"  --access-log PATH      one JSON line per request of the public\n"
	"                         listener, appended to PATH (- for stderr;\n"
	"                         reopened on SIGHUP; default: none)\n"
	"  --tls-cert PEM         serve the public listener over HTTPS (TLS "
	"1.2\n"
	"                         and 1.3) with this certificate, followed by\n"
	"                         its chain; reloaded on SIGHUP\n"
	"  --tls-key PEM          the certificate's private key, unencrypted\n"
	"                         (mode 0600); needed with --tls-cert\n"
	"  --admin-tls-cert PEM   the same for the admin listener\n"
	"  --admin-tls-key PEM    its private key (mode 0600)\n"
	"  SECONDS values also take an s, m, h or d suffix (90d).\n"
	"\n"
	"  copy                   copy every key with its kid and expiry, and\n"
	"                         every user with its id, from one store to\n"
	"                         another (the auth log too with\n"
	"                         --with-auth-log); the destination must be\n"
	"                         empty unless --merge is given\n"
	"  keys                   key administration: jwksd keys --help\n"
	"  users                  user accounts: jwksd users --help\n"
	"\n"
	"backends:";

static void main_usage(FILE *f)
{
	size_t i;

	fputs(main_usage_text, f);
	for (i = 0; ks_backends[i]; i++)
		fprintf(f, " %s (%s)", ks_backend_name(ks_backends[i]),
			ks_backend_default_path(ks_backends[i])[0]
				? ks_backend_default_path(ks_backends[i])
				: "conninfo");
	fputc('\n', f);
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static int
main_bad_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "jwksd: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	main_usage(stderr);
	return 2;
}

/* ADDR:PORT with a non-empty address (or [v6]) and a port 0..65535. */
static int main_valid_listen(const char *s)
{
	const char *colon = strrchr(s, ':');
	long long port;

	return colon && colon != s && s[strlen(s) - 1] != ':' &&
	       cli_parse_int(colon + 1, 0, 65535, &port) == 0;
}

/*
 * --alg LIST: comma-separated names from the signer's table, each once.
 * Returns 0, or 2 after a message.
 */
static int main_parse_algs(const char *list, struct main_config *cfg)
{
	char *save = NULL, *name;
	size_t n = 0, i;

	if (strlen(list) >= sizeof(cfg->alg_text))
		return main_bad_usage("--alg list too long");
	strcpy(cfg->alg_text, list);
	for (name = strtok_r(cfg->alg_text, ",", &save); name;
	     name = strtok_r(NULL, ",", &save)) {
		if (!signer_alg_supported(name))
			return main_bad_usage("unsupported --alg '%s': use "
					      "RS256, PS256, ES256 or EdDSA",
					      name);
		for (i = 0; i < n; i++)
			if (!strcmp(cfg->algs[i], name))
				return main_bad_usage("--alg '%s' given twice",
						      name);
		if (n == JWKS_MAX_ALGS)
			return main_bad_usage("too many --alg names");
		cfg->algs[n++] = name;
	}
	if (!n)
		return main_bad_usage("empty --alg");
	cfg->algs[n] = NULL;
	return 0;
}

/* The --alg names joined with commas, into buf. */
static const char *main_alg_list(const struct main_config *cfg, char *buf,
				 size_t n)
{
	size_t i, len = 0;

	buf[0] = '\0';
	for (i = 0; cfg->algs[i] && len < n; i++)
		len += (size_t)snprintf(buf + len, n - len, "%s%s",
					i ? "," : "", cfg->algs[i]);
	return buf;
}

static int main_parse_args(int argc, char **argv, struct main_config *cfg)
{
	static const struct option opts[] = {
		{"listen", required_argument, NULL, 'l'},
		{"db", required_argument, NULL, 'd'},
		{"backend", required_argument, NULL, 'b'},
		{"pg-schema", required_argument, NULL, 'P'},
		{"token-ttl", required_argument, NULL, 't'},
		{"key-ttl", required_argument, NULL, 'k'},
		{"jwks-max-age", required_argument, NULL, 'A'},
		{"margin", required_argument, NULL, 'M'},
		{"kek-file", required_argument, NULL, 'K'},
		{"threads", required_argument, NULL, 'n'},
		{"lmdb-map-size", required_argument, NULL, 'm'},
		{"max-body", required_argument, NULL, 'B'},
		{"request-timeout", required_argument, NULL, 'T'},
		{"alg", required_argument, NULL, 'a'},
		{"rsa-bits", required_argument, NULL, 'R'},
		{"issuer", required_argument, NULL, 'I'},
		{"audience", required_argument, NULL, 'u'},
		{"token-type", required_argument, NULL, 'y'},
		{"login", required_argument, NULL, 'L'},
		{"argon2", required_argument, NULL, 'G'},
		{"auth-rate", required_argument, NULL, 'r'},
		{"register-rate", required_argument, NULL, 'g'},
		{"trust-proxy", required_argument, NULL, 'x'},
		{"auth-log-days", required_argument, NULL, 'D'},
		{"admin-listen", required_argument, NULL, 'S'},
		{"stale-after", required_argument, NULL, 'Z'},
		{"access-log", required_argument, NULL, 'O'},
		{"tls-cert", required_argument, NULL, 'C'},
		{"tls-key", required_argument, NULL, 'E'},
		{"admin-tls-cert", required_argument, NULL, 'c'},
		{"admin-tls-key", required_argument, NULL, 'e'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	struct lc_policy policy;
	char why[256];
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (!main_valid_listen(optarg))
				return main_bad_usage(
					"invalid --listen '%s': want ADDR:PORT",
					optarg);
			cfg->listen = optarg;
			break;
		case 'd':
			if (!*optarg)
				return main_bad_usage("empty --db");
			cfg->db = optarg;
			break;
		case 'b':
			cfg->backend = optarg;
			break;
		case 'P':
			if (!ks_valid_schema_name(optarg))
				return main_bad_usage(
					"invalid --pg-schema '%s': want "
					"[a-z_][a-z0-9_]{0,62}",
					optarg);
			cfg->pg_schema = optarg;
			break;
		case 't':
			if (cli_parse_duration(optarg, 1, CLI_MAX_TTL,
					       &cfg->token_ttl))
				return main_bad_usage(
					"invalid --token-ttl '%s'", optarg);
			break;
		case 'k':
			if (cli_parse_duration(optarg, 1, CLI_MAX_TTL,
					       &cfg->key_ttl))
				return main_bad_usage("invalid --key-ttl '%s'",
						      optarg);
			break;
		case 'A':
			if (cli_parse_duration(optarg, 0, CLI_MAX_TTL,
					       &cfg->jwks_max_age))
				return main_bad_usage(
					"invalid --jwks-max-age '%s'", optarg);
			break;
		case 'M':
			if (cli_parse_duration(optarg, 0, CLI_MAX_TTL,
					       &cfg->margin))
				return main_bad_usage("invalid --margin '%s'",
						      optarg);
			break;
		case 'K':
			if (!*optarg)
				return main_bad_usage("empty --kek-file");
			cfg->kek_file = optarg;
			break;
		case 'n':
			if (cli_parse_int(optarg, 1, 1024, &cfg->threads))
				return main_bad_usage("invalid --threads '%s'",
						      optarg);
			break;
		case 'm':
			if (cli_parse_size(optarg, 1LL << 16, 1LL << 40,
					   &cfg->lmdb_map_size))
				return main_bad_usage(
					"invalid --lmdb-map-size '%s'", optarg);
			break;
		case 'B':
			if (cli_parse_size(optarg, 0, 1LL << 30,
					   &cfg->max_body))
				return main_bad_usage("invalid --max-body '%s'",
						      optarg);
			break;
		case 'T':
			if (cli_parse_int(optarg, 100, 600000,
					  &cfg->request_timeout_ms))
				return main_bad_usage(
					"invalid --request-timeout '%s'",
					optarg);
			break;
		case 'a':
			if (main_parse_algs(optarg, cfg))
				return 2;
			break;
		case 'R':
			if (cli_parse_int(optarg, 2048, 4096, &cfg->rsa_bits) ||
			    cfg->rsa_bits % 1024)
				return main_bad_usage(
					"invalid --rsa-bits '%s': "
					"2048, 3072 or 4096",
					optarg);
			break;
		case 'I':
			if (jose_issuer_check(optarg, why, sizeof(why)))
				return main_bad_usage("invalid --issuer: %s",
						      why);
			cfg->issuer = optarg;
			break;
		case 'u':
			if (!*optarg)
				return main_bad_usage("empty --audience");
			if (cfg->n_audiences == JWKS_MAX_AUDIENCES)
				return main_bad_usage(
					"more than %d --audience values",
					JWKS_MAX_AUDIENCES);
			cfg->audiences[cfg->n_audiences++] = optarg;
			break;
		case 'y':
			if (strcmp(optarg, JOSE_TYP_JWT) &&
			    strcmp(optarg, JOSE_TYP_AT_JWT))
				return main_bad_usage("invalid --token-type "
						      "'%s': JWT or at+jwt",
						      optarg);
			cfg->token_type = optarg;
			break;
		case 'L':
			if (strcmp(optarg, "open") &&
			    strcmp(optarg, "required"))
				return main_bad_usage("invalid --login '%s': "
						      "open or required",
						      optarg);
			cfg->login_required = !strcmp(optarg, "required");
			break;
		case 'G':
			if (pw_params_parse(&cfg->argon2, optarg, why,
					    sizeof(why)))
				return main_bad_usage("invalid --argon2: %s",
						      why);
			break;
		case 'r':
		case 'g':
			if (cli_parse_int(optarg, 0, 1000,
					  c == 'r' ? &cfg->auth_rate
						   : &cfg->register_rate))
				return main_bad_usage(
					"invalid --%s '%s': 0 to 1000",
					c == 'r' ? "auth-rate"
						 : "register-rate",
					optarg);
			break;
		case 'x':
			if (cfg->n_proxies == JWKS_MAX_TRUSTED_PROXIES)
				return main_bad_usage(
					"more than %d --trust-proxy ranges",
					JWKS_MAX_TRUSTED_PROXIES);
			if (!jwks_accounts_valid_cidr(optarg))
				return main_bad_usage(
					"invalid --trust-proxy '%s': want "
					"ADDR/PREFIX",
					optarg);
			cfg->proxies[cfg->n_proxies++] = optarg;
			break;
		case 'D':
			if (cli_parse_int(optarg, 0, 36600,
					  &cfg->auth_log_days))
				return main_bad_usage(
					"invalid --auth-log-days '%s'", optarg);
			break;
		case 'S':
			if (strchr(optarg, ':'))
				snprintf(cfg->admin_text,
					 sizeof(cfg->admin_text), "%s", optarg);
			else
				snprintf(cfg->admin_text,
					 sizeof(cfg->admin_text),
					 "127.0.0.1:%s", optarg);
			if (strlen(optarg) >= sizeof(cfg->admin_text) - 10 ||
			    !main_valid_listen(cfg->admin_text))
				return main_bad_usage("invalid --admin-listen "
						      "'%s': want [ADDR:]PORT",
						      optarg);
			cfg->admin_listen = cfg->admin_text;
			break;
		case 'Z':
			if (cli_parse_duration(optarg, 1, CLI_MAX_TTL,
					       &cfg->stale_after))
				return main_bad_usage(
					"invalid --stale-after '%s'", optarg);
			break;
		case 'O':
			if (!*optarg)
				return main_bad_usage("empty --access-log");
			cfg->access_log = optarg;
			break;
		case 'C':
			if (!*optarg)
				return main_bad_usage("empty --tls-cert");
			cfg->tls_cert = optarg;
			break;
		case 'E':
			if (!*optarg)
				return main_bad_usage("empty --tls-key");
			cfg->tls_key = optarg;
			break;
		case 'c':
			if (!*optarg)
				return main_bad_usage("empty --admin-tls-cert");
			cfg->admin_tls_cert = optarg;
			break;
		case 'e':
			if (!*optarg)
				return main_bad_usage("empty --admin-tls-key");
			cfg->admin_tls_key = optarg;
			break;
		case 'h':
			main_usage(stdout);
			exit(0);
		case 'V':
			printf("jwksd %s (civetweb %s)\n", JWKSD_VERSION,
			       mg_version());
			exit(0);
		case ':':
			return main_bad_usage("option '%s' needs a value",
					      argv[optind - 1]);
		default:
			return main_bad_usage("unknown option '%s'",
					      argv[optind - 1]);
		}
	}
	if (optind < argc)
		return main_bad_usage("unexpected argument '%s'", argv[optind]);
	if (!cfg->tls_cert != !cfg->tls_key)
		return main_bad_usage("--tls-cert and --tls-key go together");
	if (!cfg->admin_tls_cert != !cfg->admin_tls_key)
		return main_bad_usage("--admin-tls-cert and --admin-tls-key go "
				      "together");
	if (cfg->admin_tls_cert && !cfg->admin_listen)
		return main_bad_usage("--admin-tls-cert needs --admin-listen");
	if (cfg->token_type && !strcmp(cfg->token_type, JOSE_TYP_AT_JWT) &&
	    (!cfg->issuer || !cfg->n_audiences))
		return main_bad_usage("--token-type at+jwt (RFC 9068) needs "
				      "--issuer and --audience");
	/* Before any file is touched: a schedule that leaves no time. */
	policy = (struct lc_policy){cfg->key_ttl, cfg->token_ttl,
				    cfg->jwks_max_age, cfg->margin, 60};
	if (lc_policy_check(&policy, why, sizeof(why)))
		return main_bad_usage("%s", why);
	return 0;
}

/*
 * Requests between begin and end. CivetWeb's mg_stop() drops the answers of
 * requests still running (its writes stop with the server), so jwksd first
 * waits for these to finish.
 */
static atomic_int main_in_flight;
static atomic_int main_draining;

/*
 * CivetWeb accepts connections as soon as mg_start2() returns, before the
 * routes can be registered on its context; requests wait for them here
 * (begin_request runs before CivetWeb looks for a handler).
 */
static atomic_int main_routes_ready;

static void main_wait_for_routes(void)
{
	const struct timespec pause = {0, 1000000L};
	int waited_ms = 0;

	while (!atomic_load(&main_routes_ready) && waited_ms++ < 10000)
		nanosleep(&pause, NULL);
}

/*
 * Open connections. CivetWeb gives each one a worker thread until it
 * closes, so when there are as many as threads, kept-alive connections
 * would starve queued ones: answers then close their connection.
 */
static atomic_int main_connections;

static int main_init_connection(const struct mg_connection *conn,
				void **conn_data)
{
	(void)conn;
	*conn_data = NULL;
	atomic_fetch_add(&main_connections, 1);
	return 0;
}

static void main_connection_close(const struct mg_connection *conn)
{
	(void)conn;
	atomic_fetch_sub(&main_connections, 1);
}

/* When this worker thread's current request began (CLOCK_MONOTONIC, us). */
static _Thread_local uint64_t main_request_start_us;
/* The same instant on the wall clock (CLOCK_REALTIME, us), for the log. */
static _Thread_local int64_t main_request_wall_us;

/* The access log (--access-log), or NULL. */
static struct jwks_access_log *main_access_log;

/* For the metrics: lines the access log dropped. */
static uint64_t main_access_log_dropped(void *arg)
{
	return jwks_access_log_dropped(arg);
}

/* Whether this worker thread is between begin_request and end_request. */
static _Thread_local int main_request_open;

static uint64_t main_mono_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* Set the start of this thread's request to now. */
static void main_request_started(void)
{
	struct timespec wall;

	main_request_start_us = main_mono_us();
	clock_gettime(CLOCK_REALTIME, &wall);
	main_request_wall_us =
		(int64_t)wall.tv_sec * 1000000 + wall.tv_nsec / 1000;
}

static int main_begin_request(struct mg_connection *conn)
{
	const struct main_config *cfg = mg_get_user_data(mg_get_context(conn));

	main_request_open = 1;
	if (jwks_metrics_enabled() || main_access_log)
		main_request_started();
	atomic_fetch_add(&main_in_flight, 1);
	main_wait_for_routes();
	if (atomic_load(&main_draining))
		return jwks_http_shutting_down(conn);
	if (atomic_load(&main_connections) >= cfg->threads)
		jwks_http_close_after(conn);
	return jwks_http_screen(conn, cfg->max_body);
}

static int main_admin_http_error(struct mg_connection *conn, int status,
				 const char *message)
{
	(void)message;
	return jwks_http_error_page(conn, status);
}

/*
 * The access log's line of the request this thread answered. parsed 0:
 * CivetWeb could not parse it, and its request line fields may hold any
 * part of the request, headers included (credentials): only the client
 * is logged, with an empty method and path.
 */
static void main_log_request(const struct mg_connection *conn, int status,
			     const struct jwks_http_note *note, uint64_t took,
			     int parsed)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	struct jwks_access_entry entry = {
		.time_us = main_request_wall_us,
		.client = ri ? ri->remote_addr : "",
		.status = status,
		.bytes = note->bytes,
		.duration_us = took,
		.kid = note->kid,
	};

	if (ri && parsed) {
		entry.method = ri->request_method;
		entry.path =
			ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
		entry.query = ri->query_string;
	}
	jwks_access_log_write(main_access_log, &entry);
}

/*
 * CivetWeb's own error answers. For a request it could not parse (a
 * control byte or a byte over 0x7F in the request line, an unknown HTTP
 * version) neither begin_request nor end_request runs: the access log
 * gets the line here.
 */
static int main_http_error(struct mg_connection *conn, int status,
			   const char *message)
{
	struct jwks_http_note note;
	int rc;

	(void)message;
	if (main_request_open || !main_access_log)
		return jwks_http_error_page(conn, status);
	main_request_started();
	rc = jwks_http_error_page(conn, status);
	jwks_http_last_note(&note);
	main_log_request(conn, status, &note,
			 main_mono_us() - main_request_start_us, 0);
	return rc;
}

/*
 * Count the request just answered (the public and the admin listener);
 * log it to the access log when log is not NULL.
 */
static void main_observe(const struct mg_connection *conn, int status, int log)
{
	struct jwks_http_note note;
	uint64_t took;

	jwks_http_last_note(&note);
	took = main_mono_us() - main_request_start_us;
	if (jwks_metrics_enabled())
		jwks_metrics_observe(note.route, status, took);
	if (log && main_access_log)
		main_log_request(conn, status, &note, took, 1);
}

static void main_end_request(const struct mg_connection *conn, int status)
{
	main_observe(conn, status, 1);
	main_request_open = 0;
	atomic_fetch_sub(&main_in_flight, 1);
}

/* Set once the admin routes are registered: as main_routes_ready. */
static atomic_int main_admin_ready;

static int main_admin_begin_request(struct mg_connection *conn)
{
	const struct timespec pause = {0, 1000000L};
	int waited_ms = 0;

	main_request_start_us = main_mono_us();
	while (!atomic_load(&main_admin_ready) && waited_ms++ < 10000)
		nanosleep(&pause, NULL);
	return jwks_http_screen(conn, 0);
}

static void main_admin_end_request(const struct mg_connection *conn, int status)
{
	main_observe(conn, status, 0);
}

/*
 * Answer new requests with 503 and wait until no request has been running
 * for 100 ms, at most timeout_ms.
 */
static void main_drain(unsigned timeout_ms)
{
	const struct timespec tick = {0, 20 * 1000000L};
	unsigned waited = 0, idle = 0;

	atomic_store(&main_draining, 1);
	while (idle < 5 && waited < timeout_ms) {
		nanosleep(&tick, NULL);
		waited += 20;
		idle = atomic_load(&main_in_flight) ? 0 : idle + 1;
	}
}

static int main_civetweb_log(const struct mg_connection *conn,
			     const char *message)
{
	(void)conn;
	fprintf(stderr, "jwksd: civetweb: %s\n", message);
	return 1;
}

/*
 * CivetWeb's init_ssl callbacks: the listener's SSL_CTX gets jwksd's
 * policy and the certificate callback of its struct jwks_tls (crypto/tls.c).
 * 1: set up, CivetWeb loads no certificate of its own; -1: failed, and
 * mg_start2() fails.
 */
static int main_setup_tls(struct jwks_tls *tls, void *ssl_ctx,
			  const char *which)
{
	struct ks_err e = {{0}};

	if (jwks_tls_setup_ctx(tls, ssl_ctx, &e)) {
		fprintf(stderr,
			"jwksd: cannot set up TLS on the %s listener: %s\n",
			which, e.text);
		return -1;
	}
	return 1;
}

static int main_init_ssl(void *ssl_ctx, void *user_data)
{
	const struct main_config *cfg = user_data;

	return main_setup_tls(cfg->tls, ssl_ctx, "public");
}

static int main_admin_init_ssl(void *ssl_ctx, void *user_data)
{
	const struct main_config *cfg = user_data;

	return main_setup_tls(cfg->admin_tls, ssl_ctx, "admin");
}

/* listen with CivetWeb's "s" suffix when tls is set, into out. */
static const char *main_ports(const char *listen, const struct jwks_tls *tls,
			      char *out, size_t len)
{
	snprintf(out, len, "%s%s", listen, tls ? "s" : "");
	return out;
}

static struct mg_context *main_start_http(struct main_config *cfg,
					  const struct jwks_http_routes *routes)
{
	char threads[24], errtext[256] = "";
	unsigned errcode = 0;
	struct mg_callbacks callbacks;
	struct mg_error_data error = {&errcode, errtext, sizeof(errtext)};
	struct mg_init_data init = {&callbacks, (void *)cfg, NULL};
	struct mg_context *ctx;
	const char *options[] = {
		"listening_ports",
		main_ports(cfg->listen, cfg->tls, cfg->listen_ports,
			   sizeof(cfg->listen_ports)),
		"num_threads",
		threads,
		"request_timeout_ms",
		cfg->timeout_text,
		"keep_alive_timeout_ms",
		cfg->timeout_text,
		"max_request_size",
		"16384",
		"decode_url",
		"no",
		"enable_keep_alive",
		"yes",
		"tcp_nodelay",
		"1",
		"access_control_allow_origin",
		"",
		NULL,
	};

	snprintf(threads, sizeof(threads), "%lld", cfg->threads);
	snprintf(cfg->timeout_text, sizeof(cfg->timeout_text), "%lld",
		 cfg->request_timeout_ms);
	memset(&callbacks, 0, sizeof(callbacks));
	callbacks.log_message = main_civetweb_log;
	callbacks.begin_request = main_begin_request;
	callbacks.end_request = main_end_request;
	callbacks.http_error = main_http_error;
	callbacks.init_connection = main_init_connection;
	callbacks.connection_close = main_connection_close;
	if (cfg->tls)
		callbacks.init_ssl = main_init_ssl;
	init.configuration_options = options;
	ctx = mg_start2(&init, &error);
	if (!ctx) {
		fprintf(stderr, "jwksd: cannot listen on '%s': %s (%u)\n",
			cfg->listen, errtext[0] ? errtext : "unknown error",
			errcode);
		return NULL;
	}
	jwks_http_register(ctx, routes, 1);
	atomic_store(&main_routes_ready, 1);
	return ctx;
}

/*
 * The admin listener: a context of its own with a few threads, so that a
 * scrape never takes a worker from the public routes.
 */
static struct mg_context *
main_start_admin(struct main_config *cfg,
		 const struct jwks_metrics_sources *metrics)
{
	char errtext[256] = "";
	unsigned errcode = 0;
	struct mg_callbacks callbacks;
	struct mg_error_data error = {&errcode, errtext, sizeof(errtext)};
	struct mg_init_data init = {&callbacks, (void *)cfg, NULL};
	struct mg_context *ctx;
	const char *options[] = {
		"listening_ports",
		main_ports(cfg->admin_listen, cfg->admin_tls, cfg->admin_ports,
			   sizeof(cfg->admin_ports)),
		"num_threads",
		"4",
		"request_timeout_ms",
		cfg->timeout_text,
		"keep_alive_timeout_ms",
		cfg->timeout_text,
		"max_request_size",
		"16384",
		"decode_url",
		"no",
		"enable_keep_alive",
		"yes",
		"access_control_allow_origin",
		"",
		NULL,
	};

	memset(&callbacks, 0, sizeof(callbacks));
	callbacks.log_message = main_civetweb_log;
	callbacks.begin_request = main_admin_begin_request;
	callbacks.end_request = main_admin_end_request;
	callbacks.http_error = main_admin_http_error;
	if (cfg->admin_tls)
		callbacks.init_ssl = main_admin_init_ssl;
	init.configuration_options = options;
	ctx = mg_start2(&init, &error);
	if (!ctx) {
		fprintf(stderr,
			"jwksd: cannot listen on '%s' (admin): %s (%u)\n",
			cfg->admin_listen,
			errtext[0] ? errtext : "unknown error", errcode);
		return NULL;
	}
	if (jwks_admin_register(ctx, metrics)) {
		fprintf(stderr, "jwksd: cannot set up the admin routes\n");
		mg_stop(ctx);
		return NULL;
	}
	atomic_store(&main_admin_ready, 1);
	return ctx;
}

/* The address actually listened on (the port may have been 0). */
static void main_bound_address(struct mg_context *ctx, const char *listen,
			       char *out, size_t len)
{
	struct mg_server_port port;
	const char *colon = strrchr(listen, ':');

	if (mg_get_server_ports(ctx, 1, &port) == 1 && colon)
		snprintf(out, len, "%.*s:%d", (int)(colon - listen), listen,
			 port.port);
	else
		snprintf(out, len, "%s", listen);
}

/*
 * CivetWeb's accept loop notices mg_stop() only when its poll() times out
 * (2 s in 1.15), so stopping takes up to 2 s. Connecting to the listening
 * port wakes it at once: this thread does so until the stop is done.
 */
struct main_waker {
	char host[64];
	char port[8];
	atomic_int done;
};

static void *main_waker_run(void *arg)
{
	struct main_waker *w = arg;
	const struct timespec pause = {0, 50 * 1000000L};
	struct addrinfo hints, *ai = NULL;
	int fd;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	if (getaddrinfo(w->host, w->port, &hints, &ai) != 0)
		return NULL;
	while (!atomic_load(&w->done)) {
		fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		if (fd >= 0) {
			connect(fd, ai->ai_addr, ai->ai_addrlen);
			close(fd);
		}
		nanosleep(&pause, NULL);
	}
	freeaddrinfo(ai);
	return NULL;
}

/* Stop CivetWeb, waking its accept loop so that it stops promptly. */
static void main_stop_http(struct mg_context *ctx, const char *listen)
{
	struct main_waker w = {.done = 0};
	struct mg_server_port port;
	const char *colon = strrchr(listen, ':');
	pthread_t tid;
	int woke = 0;

	if (mg_get_server_ports(ctx, 1, &port) == 1 && colon) {
		snprintf(w.host, sizeof(w.host), "%.*s", (int)(colon - listen),
			 listen[0] == '[' ? listen + 1 : listen);
		w.host[strcspn(w.host, "]")] = '\0';
		if (!strcmp(w.host, "0.0.0.0") || !w.host[0])
			snprintf(w.host, sizeof(w.host), "127.0.0.1");
		else if (!strcmp(w.host, "::"))
			snprintf(w.host, sizeof(w.host), "::1");
		snprintf(w.port, sizeof(w.port), "%d", port.port);
		woke = !pthread_create(&tid, NULL, main_waker_run, &w);
	}
	mg_stop(ctx);
	if (woke) {
		atomic_store(&w.done, 1);
		pthread_join(tid, NULL);
	}
}

/*
 * Load and check the certificates and keys given (--tls-cert/--tls-key,
 * --admin-tls-cert/--admin-tls-key). Returns 0, or 1 after a message.
 */
static int main_load_tls(struct main_config *cfg)
{
	struct ks_err e = {{0}};
	char about[512];

	if (cfg->tls_cert) {
		if (jwks_tls_new(&cfg->tls, cfg->tls_cert, cfg->tls_key, &e)) {
			fprintf(stderr, "jwksd: --tls-cert/--tls-key: %s\n",
				e.text);
			return 1;
		}
		jwks_tls_describe(cfg->tls, about, sizeof(about));
		fprintf(stderr, "jwksd: TLS on the public listener: %s\n",
			about);
	}
	if (cfg->admin_tls_cert) {
		if (jwks_tls_new(&cfg->admin_tls, cfg->admin_tls_cert,
				 cfg->admin_tls_key, &e)) {
			fprintf(stderr,
				"jwksd: --admin-tls-cert/--admin-tls-key: %s\n",
				e.text);
			return 1;
		}
		jwks_tls_describe(cfg->admin_tls, about, sizeof(about));
		fprintf(stderr, "jwksd: TLS on the admin listener: %s\n",
			about);
	}
	return 0;
}

/*
 * SIGHUP: read a listener's certificate and key again. Handshakes that
 * begin afterwards use the new pair; connections already open keep
 * theirs. Bad files keep the pair loaded before, said in one line.
 */
static void main_reload_tls(struct jwks_tls *tls, const char *which,
			    const char *cert_flag, const char *key_flag)
{
	struct ks_err e = {{0}};
	char about[512];

	if (!tls)
		return;
	if (jwks_tls_reload(tls, &e)) {
		fprintf(stderr,
			"jwksd: TLS reload on the %s listener failed, still "
			"serving the previous certificate: %s/%s: %s\n",
			which, cert_flag, key_flag, e.text);
		return;
	}
	jwks_tls_describe(tls, about, sizeof(about));
	fprintf(stderr, "jwksd: TLS on the %s listener reloaded: %s\n", which,
		about);
}

/* NAME:PATH, split at the first colon. */
static int main_parse_store_spec(char *spec, const struct ks_backend **be,
				 const char **path)
{
	char *colon = strchr(spec, ':');

	if (!colon || colon == spec || !colon[1])
		return main_bad_usage("invalid store '%s': want NAME:PATH",
				      spec);
	*colon = '\0';
	*be = cli_find_backend(spec);
	*path = colon + 1;
	return *be ? 0 : 2;
}

/* jwksd copy --from NAME:PATH --to NAME:PATH [--merge] [--with-auth-log] */
static int main_copy(int argc, char **argv, const struct main_config *cfg)
{
	static const struct option opts[] = {
		{"from", required_argument, NULL, 'f'},
		{"to", required_argument, NULL, 't'},
		{"merge", no_argument, NULL, 'M'},
		{"with-auth-log", no_argument, NULL, 'A'},
		{"lmdb-map-size", required_argument, NULL, 'm'},
		{"pg-schema", required_argument, NULL, 'P'},
		{NULL, 0, NULL, 0},
	};
	char from_shown[512], to_shown[512];
	const struct ks_backend *from_be = NULL, *to_be = NULL;
	const char *from_path = NULL, *to_path = NULL;
	struct ks_store *from = NULL, *to = NULL;
	struct main_config c = *cfg;
	struct ks_err e = {{0}};
	struct ks_copy_counts copied = {0, 0, 0};
	unsigned flags = 0;
	int opt, rc;

	opterr = 0;
	optind = 1;
	while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		rc = 0;
		if (opt == 'f')
			rc = main_parse_store_spec(optarg, &from_be,
						   &from_path);
		else if (opt == 't')
			rc = main_parse_store_spec(optarg, &to_be, &to_path);
		else if (opt == 'M')
			flags |= KS_COPY_MERGE;
		else if (opt == 'A')
			flags |= KS_COPY_AUTH_LOG;
		else if (opt == 'm' &&
			 cli_parse_size(optarg, 1LL << 16, 1LL << 40,
					&c.lmdb_map_size))
			rc = main_bad_usage("invalid --lmdb-map-size '%s'",
					    optarg);
		else if (opt == 'P' && !ks_valid_schema_name(optarg))
			rc = main_bad_usage("invalid --pg-schema '%s': want "
					    "[a-z_][a-z0-9_]{0,62}",
					    optarg);
		else if (opt == 'P')
			c.pg_schema = optarg;
		else if (opt == ':' || opt == '?')
			rc = main_bad_usage("copy: bad option '%s'",
					    argv[optind - 1]);
		if (rc)
			return rc;
	}
	if (!from_be || !to_be || optind < argc)
		return main_bad_usage("copy needs --from NAME:PATH and "
				      "--to NAME:PATH");
	ks_describe(from_be, from_path, from_shown, sizeof(from_shown));
	ks_describe(to_be, to_path, to_shown, sizeof(to_shown));
	if (cli_open_store(&from, from_be, from_path, c.threads,
			   c.lmdb_map_size, c.pg_schema))
		return 1;
	if (cli_open_store(&to, to_be, to_path, c.threads, c.lmdb_map_size,
			   c.pg_schema)) {
		ks_close(from);
		return 1;
	}
	rc = ks_copy(to, from, flags, &copied, &e);
	if (rc)
		fprintf(stderr,
			"jwksd: copy from %s '%s' to %s '%s' failed, nothing "
			"was written: %s (%s)%s\n",
			ks_backend_name(from_be), from_shown,
			ks_backend_name(to_be), to_shown, ks_strerror(rc),
			e.text,
			rc == KS_EEXISTS && !(flags & KS_COPY_MERGE)
				? "; --merge adds to it"
				: "");
	else if (flags & KS_COPY_AUTH_LOG)
		printf("copied %zu keys, %zu users and %zu auth-log entries "
		       "from %s '%s' to %s '%s'\n",
		       copied.keys, copied.users, copied.auth_logs,
		       ks_backend_name(from_be), from_shown,
		       ks_backend_name(to_be), to_shown);
	else
		printf("copied %zu keys and %zu users from %s '%s' to %s "
		       "'%s'\n",
		       copied.keys, copied.users, ks_backend_name(from_be),
		       from_shown, ks_backend_name(to_be), to_shown);
	ks_close(to);
	ks_close(from);
	return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct main_config cfg = {
		.listen = "127.0.0.1:8080",
		.token_ttl = 3600,
		.key_ttl = 86400,
		.jwks_max_age = 300,
		.margin = 300,
		.threads = 64,
		.max_body = 64 * 1024,
		.request_timeout_ms = 2000,
		.argon2 = PW_PARAMS_INIT,
		.auth_log_days = 90,
		.auth_rate = 10,
		.register_rate = 5,
		.stale_after = 10,
	};
	struct jwks_accounts_options aopts = JWKS_ACCOUNTS_OPTIONS_INIT;
	struct jwks_accounts *acct = NULL;
	struct jwks_http_routes routes = {NULL, NULL, 0};
	struct jwks_service_options sopts = JWKS_SERVICE_OPTIONS_INIT;
	const struct ks_backend *be;
	struct jwks_service *svc = NULL;
	struct ks_store *store = NULL;
	struct kek *kek = NULL;
	struct mg_context *ctx = NULL, *admin = NULL;
	struct jwks_metrics_sources metrics = {NULL, NULL, NULL, NULL, NULL, 0};
	struct ks_err e = {{0}};
	const char *path;
	char shown[512];
	char address[128], admin_address[128] = "", algs[64];
	size_t nkeys = 0;
	sigset_t sigs;
	int rc, sig, status = 1, library = 0;

	if (argc > 1 && !strcmp(argv[1], "copy"))
		return main_copy(argc - 1, argv + 1, &cfg);
	if (argc > 1 && !strcmp(argv[1], "keys"))
		return keys_cmd_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "users"))
		return users_cmd_main(argc - 1, argv + 1);
	rc = main_parse_args(argc, argv, &cfg);
	if (rc)
		return rc;
	/*
	 * Large blocks (Argon2id's m KiB per password hash) straight from the
	 * kernel and back, always: glibc would otherwise raise its mmap
	 * threshold after the first large free and keep such blocks in each
	 * thread's arena, resident long after the hash.
	 */
	mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
	be = cli_find_backend(cfg.backend);
	if (!be)
		return 2;

	/* Worker threads inherit this mask; main waits for the signals. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Before the store: a bad path is a start error, and nothing else. */
	if (cfg.access_log) {
		char why[512];

		if (jwks_access_log_open(&main_access_log, cfg.access_log, 0,
					 why, sizeof(why))) {
			fprintf(stderr, "jwksd: access log: %s\n", why);
			return 1;
		}
	}

	/* Before the store too: the certificates and keys, checked. */
	if (main_load_tls(&cfg))
		goto out;

	path = cfg.db ? cfg.db : ks_backend_default_path(be);
	/* The store as every message shows it: never with a password. */
	ks_describe(be, path, shown, sizeof(shown));
	if (cli_load_kek(cfg.kek_file, &kek))
		goto out;
	if (cli_open_store(&store, be, path, cfg.threads, cfg.lmdb_map_size,
			   cfg.pg_schema) ||
	    cli_check_store(store, shown, kek, 1, 1))
		goto out;
	sopts.token_ttl = cfg.token_ttl;
	sopts.key_ttl = cfg.key_ttl;
	sopts.jwks_max_age = cfg.jwks_max_age;
	sopts.margin = cfg.margin;
	sopts.kek = kek;
	sopts.algs = cfg.algs[0] ? cfg.algs : NULL;
	sopts.rsa_bits = (unsigned)cfg.rsa_bits;
	sopts.issuer = cfg.issuer;
	sopts.audiences = cfg.audiences;
	sopts.token_type = cfg.token_type;
	rc = jwks_service_new(&svc, store, &sopts, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot load keys from '%s': %s (%s)\n",
			shown, ks_strerror(rc), e.text);
		goto out;
	}

	aopts.argon2 = cfg.argon2;
	aopts.login_required = cfg.login_required;
	aopts.auth_rate = (unsigned)cfg.auth_rate;
	aopts.register_rate = (unsigned)cfg.register_rate;
	aopts.trusted_proxies = cfg.proxies;
	aopts.auth_log_days = cfg.auth_log_days;
	rc = jwks_accounts_new(&acct, store, &aopts, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot set up accounts: %s\n", e.text);
		goto out;
	}
	routes.svc = svc;
	routes.acct = acct;
	routes.ready_max_stale_ms = cfg.stale_after * 1000;
	metrics.svc = svc;
	metrics.acct = acct;
	metrics.version = JWKSD_VERSION;
	metrics.ready_max_stale_ms = routes.ready_max_stale_ms;
	if (main_access_log) {
		metrics.access_log_dropped = main_access_log_dropped;
		metrics.access_log_arg = main_access_log;
	}

	/* Listen at once; requests wait until the first keys are ready. */
	if (cfg.tls || cfg.admin_tls) {
		if (jwks_tls_civetweb_init(&e)) {
			fprintf(stderr, "jwksd: TLS: %s\n", e.text);
			goto out;
		}
		library = 1;
		if (!(mg_init_library(MG_FEATURES_TLS) & MG_FEATURES_TLS)) {
			fprintf(stderr,
				"jwksd: CivetWeb cannot load OpenSSL for "
				"TLS (it opens libssl.so and "
				"libcrypto.so)\n");
			goto out;
		}
	} else {
		mg_init_library(0);
		library = 1;
	}
	if (cfg.admin_listen)
		jwks_metrics_enable();
	ctx = main_start_http(&cfg, &routes);
	if (!ctx)
		goto out;
	if (cfg.admin_listen) {
		admin = main_start_admin(&cfg, &metrics);
		if (!admin)
			goto out;
		main_bound_address(admin, cfg.admin_listen, admin_address,
				   sizeof(admin_address));
	}
	rc = jwks_service_start(svc, &nkeys, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot prepare keys in '%s': %s (%s)\n",
			shown, ks_strerror(rc), e.text);
		goto out;
	}
	main_bound_address(ctx, cfg.listen, address, sizeof(address));
	fprintf(stderr,
		"jwksd: listening on %s, backend %s, store '%s', %zu keys, "
		"signing %s%s%s\n",
		address, ks_backend_name(be), shown, nkeys,
		cfg.algs[0] ? main_alg_list(&cfg, algs, sizeof(algs)) : "RS256",
		admin_address[0] ? ", admin on " : "", admin_address);

	/*
	 * SIGHUP reopens the access log (rotation) and reloads the TLS
	 * certificates and keys; SIGINT/TERM stop.
	 */
	for (;;) {
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig != SIGHUP)
			break;
		jwks_access_log_reopen(main_access_log);
		main_reload_tls(cfg.tls, "public", "--tls-cert", "--tls-key");
		main_reload_tls(cfg.admin_tls, "admin", "--admin-tls-cert",
				"--admin-tls-key");
	}
	fprintf(stderr, "jwksd: %s received, stopping\n",
		sig == SIGINT ? "SIGINT" : "SIGTERM");
	main_drain(10000);
	status = 0;
out:
	if (admin)
		main_stop_http(admin, cfg.admin_listen);
	if (ctx)
		main_stop_http(ctx, cfg.listen);
	/* After the listeners: no request is left to log. */
	jwks_access_log_close(main_access_log);
	main_access_log = NULL;
	jwks_accounts_free(acct);
	jwks_service_free(svc);
	ks_close(store);
	kek_free(kek);
	if (library)
		mg_exit_library();
	/* After the listeners and their SSL_CTXs. */
	jwks_tls_free(cfg.admin_tls);
	jwks_tls_free(cfg.tls);
	return status;
}
