/*
 * INTERNAL to server/: Prometheus metrics. Requests are counted by route
 * and status, with a latency histogram per route, in per-thread shards of
 * relaxed atomic counters: no lock and no shared cache line per request.
 * A scrape sums the shards and asks the service, the accounts and the
 * access log for their own counters, and renders the text exposition
 * format 0.0.4.
 */
#ifndef JWKS_METRICS_H
#define JWKS_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct jwks_service;
struct jwks_accounts;

/*
 * Turn request counting on (jwksd does when the admin listener is on);
 * until then jwks_metrics_observe() returns at once.
 */
void jwks_metrics_enable(void);
int jwks_metrics_enabled(void);

/* One request answered: route (enum jwks_http_route), status, duration. */
void jwks_metrics_observe(int route, int status, uint64_t duration_us);

/*
 * What a scrape reports beside the requests. svc is required; acct (the
 * accounts' counters) and access_log_dropped (lines the access log
 * dropped) may be NULL when off. version labels jwksd_build_info.
 */
struct jwks_metrics_sources {
	struct jwks_service *svc;
	struct jwks_accounts *acct;
	uint64_t (*access_log_dropped)(void *arg);
	void *access_log_arg;
	const char *version;
	int64_t ready_max_stale_ms;
};

/*
 * The exposition text, malloc'd and NUL-terminated (*len_out its length),
 * or NULL without memory.
 */
char *jwks_metrics_render(const struct jwks_metrics_sources *src,
			  size_t *len_out);

/* The route label of a route number ("auth", "jwks", ...). */
const char *jwks_metrics_route_name(int route);

#endif /* JWKS_METRICS_H */
