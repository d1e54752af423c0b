/*
 * jwksd: command line, configuration, start and stop.
 */
#include <civetweb.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keystore.h"
#include "service.h"

#ifndef JWKSD_VERSION
#define JWKSD_VERSION "unknown"
#endif

#define MAIN_MAX_TTL (10LL * 366 * 24 * 3600)

struct main_config {
	const char *listen;
	const char *db;
	const char *backend;
	long long token_ttl;
	long long key_ttl;
	long long threads;
};

static void main_usage(FILE *f)
{
	size_t i;

	fprintf(f, "usage: jwksd [--listen ADDR:PORT] [--db PATH] [--backend "
		   "NAME]\n"
		   "             [--token-ttl SECONDS] [--key-ttl SECONDS] "
		   "[--threads N]\n"
		   "             [--help] [--version]\n"
		   "\n"
		   "  --listen ADDR:PORT   address to serve on (default "
		   "127.0.0.1:8080)\n"
		   "  --db PATH            key store (default: the backend's "
		   "file in the current directory)\n"
		   "  --backend NAME       key store backend (default sqlite)\n"
		   "  --token-ttl SECONDS  lifetime of issued tokens (default "
		   "3600)\n"
		   "  --key-ttl SECONDS    lifetime of generated keys (default "
		   "86400)\n"
		   "  --threads N          worker threads (default 16)\n"
		   "\n"
		   "backends:");
	for (i = 0; ks_backends[i]; i++)
		fprintf(f, " %s (%s)", ks_backend_name(ks_backends[i]),
			ks_backend_default_path(ks_backends[i]));
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

/* A decimal integer in [min, max] and nothing else. */
static int main_parse_int(const char *s, long long min, long long max,
			  long long *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* ADDR:PORT with a non-empty address (or [v6]) and a port 0..65535. */
static int main_valid_listen(const char *s)
{
	const char *colon = strrchr(s, ':');
	long long port;

	return colon && colon != s && s[strlen(s) - 1] != ':' &&
	       main_parse_int(colon + 1, 0, 65535, &port) == 0;
}

static int main_parse_args(int argc, char **argv, struct main_config *cfg)
{
	static const struct option opts[] = {
		{"listen", required_argument, NULL, 'l'},
		{"db", required_argument, NULL, 'd'},
		{"backend", required_argument, NULL, 'b'},
		{"token-ttl", required_argument, NULL, 't'},
		{"key-ttl", required_argument, NULL, 'k'},
		{"threads", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
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
		case 't':
			if (main_parse_int(optarg, 1, MAIN_MAX_TTL,
					   &cfg->token_ttl))
				return main_bad_usage(
					"invalid --token-ttl '%s'", optarg);
			break;
		case 'k':
			if (main_parse_int(optarg, 1, MAIN_MAX_TTL,
					   &cfg->key_ttl))
				return main_bad_usage("invalid --key-ttl '%s'",
						      optarg);
			break;
		case 'n':
			if (main_parse_int(optarg, 1, 1024, &cfg->threads))
				return main_bad_usage("invalid --threads '%s'",
						      optarg);
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
	return 0;
}

static int main_civetweb_log(const struct mg_connection *conn,
			     const char *message)
{
	(void)conn;
	fprintf(stderr, "jwksd: civetweb: %s\n", message);
	return 1;
}

static struct mg_context *main_start_http(const struct main_config *cfg,
					  struct jwks_service *svc)
{
	char threads[24], errtext[256] = "";
	unsigned errcode = 0;
	struct mg_callbacks callbacks;
	struct mg_error_data error = {&errcode, errtext, sizeof(errtext)};
	struct mg_init_data init = {&callbacks, NULL, NULL};
	struct mg_context *ctx;
	const char *options[] = {
		"listening_ports",
		cfg->listen,
		"num_threads",
		threads,
		"request_timeout_ms",
		"5000",
		"keep_alive_timeout_ms",
		"5000",
		"enable_keep_alive",
		"yes",
		"tcp_nodelay",
		"1",
		"access_control_allow_origin",
		"",
		NULL,
	};

	snprintf(threads, sizeof(threads), "%lld", cfg->threads);
	memset(&callbacks, 0, sizeof(callbacks));
	callbacks.log_message = main_civetweb_log;
	init.configuration_options = options;
	ctx = mg_start2(&init, &error);
	if (!ctx) {
		fprintf(stderr, "jwksd: cannot listen on '%s': %s (%u)\n",
			cfg->listen, errtext[0] ? errtext : "unknown error",
			errcode);
		return NULL;
	}
	jwks_http_register(ctx, svc, 1);
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

int main(int argc, char **argv)
{
	struct main_config cfg = {
		.listen = "127.0.0.1:8080",
		.token_ttl = 3600,
		.key_ttl = 86400,
		.threads = 16,
	};
	struct jwks_service_options sopts = JWKS_SERVICE_OPTIONS_INIT;
	struct ks_options kopts = KS_OPTIONS_INIT;
	const struct ks_backend *be;
	struct jwks_service *svc = NULL;
	struct ks_store *store = NULL;
	struct mg_context *ctx = NULL;
	struct ks_err e = {{0}};
	char address[128];
	size_t nkeys = 0, i;
	sigset_t sigs;
	int rc, sig, status = 1, library = 0;

	rc = main_parse_args(argc, argv, &cfg);
	if (rc)
		return rc;
	be = ks_backend_find(cfg.backend);
	if (!be) {
		fprintf(stderr, "jwksd: unknown backend '%s'; valid backends:",
			cfg.backend);
		for (i = 0; ks_backends[i]; i++)
			fprintf(stderr, " %s", ks_backend_name(ks_backends[i]));
		fputc('\n', stderr);
		return 2;
	}

	/* Worker threads inherit this mask; main waits for the signals. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	kopts.path = cfg.db ? cfg.db : ks_backend_default_path(be);
	kopts.max_readers = (unsigned)cfg.threads + 8;
	rc = ks_open(&store, be, &kopts, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot open %s store '%s': %s\n",
			ks_backend_name(be), kopts.path, e.text);
		return 1;
	}
	sopts.token_ttl = cfg.token_ttl;
	sopts.key_ttl = cfg.key_ttl;
	rc = jwks_service_new(&svc, store, &sopts, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot load keys from '%s': %s (%s)\n",
			kopts.path, ks_strerror(rc), e.text);
		goto out;
	}

	/* Listen at once; requests wait until the first keys are ready. */
	mg_init_library(0);
	library = 1;
	ctx = main_start_http(&cfg, svc);
	if (!ctx)
		goto out;
	rc = jwks_service_start(svc, &nkeys, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot prepare keys in '%s': %s (%s)\n",
			kopts.path, ks_strerror(rc), e.text);
		goto out;
	}
	main_bound_address(ctx, cfg.listen, address, sizeof(address));
	fprintf(stderr,
		"jwksd: listening on %s, backend %s, store '%s', %zu keys\n",
		address, ks_backend_name(be), kopts.path, nkeys);

	while (sigwait(&sigs, &sig) != 0)
		;
	fprintf(stderr, "jwksd: %s received, stopping\n",
		sig == SIGINT ? "SIGINT" : "SIGTERM");
	status = 0;
out:
	if (ctx)
		mg_stop(ctx);
	jwks_service_free(svc);
	ks_close(store);
	if (library)
		mg_exit_library();
	return status;
}
