/*
 * A host program that embeds jwksd: it runs CivetWeb for its own route
 * (GET /hello) and mounts jwksd's routes (POST /auth, the JWKS, the
 * probes) on the same context and port.
 *
 *   embed ADDR:PORT STORE_FILE
 *
 * Build in the tree (CMake target `embed`), or outside it against an
 * installed jwksd:
 *
 *   cc embed.c $(pkg-config --cflags --libs jwksd) -o embed
 *
 * It prints "embed: listening on ADDR:PORT" once it serves, and stops on
 * SIGINT or SIGTERM.
 */
#define _POSIX_C_SOURCE 200809L /* sigwait, pthread_sigmask */

#include <civetweb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>

#include <jwks_http.h>
#include <keystore.h>
#include <service.h>

/* The host's own route. */
static int hello(struct mg_connection *conn, void *cbdata)
{
	static const char body[] = "hello from the host\n";

	(void)cbdata;
	mg_send_http_ok(conn, "text/plain", (long long)(sizeof(body) - 1));
	mg_write(conn, body, sizeof(body) - 1);
	return 200;
}

int main(int argc, char **argv)
{
	struct ks_options kopts = KS_OPTIONS_INIT;
	struct jwks_service_options sopts = JWKS_SERVICE_OPTIONS_INIT;
	struct jwks_http_routes routes = {NULL, NULL, 0};
	const struct ks_backend *be = ks_backend_find("sqlite");
	const char *options[] = {"listening_ports", NULL, "num_threads", "8",
				 NULL};
	struct ks_store *store = NULL;
	struct jwks_service *svc = NULL;
	struct mg_context *ctx = NULL;
	struct mg_server_port port;
	struct ks_err e = {{0}};
	sigset_t sigs;
	int sig, status = 1;

	if (argc != 3 || !be) {
		fprintf(stderr, "usage: embed ADDR:PORT STORE_FILE\n");
		return 2;
	}
	options[1] = argv[1];
	kopts.path = argv[2];

	/* CivetWeb's threads inherit the mask; main waits for the signals. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	if (ks_open(&store, be, &kopts, &e) ||
	    jwks_service_new(&svc, store, &sopts, &e) ||
	    jwks_service_start(svc, NULL, &e)) {
		fprintf(stderr, "embed: cannot start the issuer: %s\n", e.text);
		goto out;
	}
	routes.svc = svc;
	mg_init_library(0);
	ctx = mg_start(NULL, NULL, options);
	if (!ctx) {
		fprintf(stderr, "embed: cannot listen on %s\n", argv[1]);
		goto out;
	}
	mg_set_request_handler(ctx, "/hello", hello, NULL);
	/* Not a catch-all: the host may serve other paths of its own. */
	jwks_http_register(ctx, &routes, 0);
	if (mg_get_server_ports(ctx, 1, &port) == 1)
		printf("embed: listening on port %d\n", port.port);
	fflush(stdout);
	while (sigwait(&sigs, &sig) != 0)
		;
	status = 0;
out:
	if (ctx)
		mg_stop(ctx);
	jwks_service_free(svc);
	ks_close(store);
	return status;
}
