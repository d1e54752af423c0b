/*
 * INTERNAL to server/: the admin listener's routes, for operators, never
 * for the internet: GET /metrics (Prometheus), GET /keys.json (the key
 * schedule as `jwksd keys list --json` prints it) and GET / (the key
 * timeline page). Every other path answers 404, the public routes too.
 */
#ifndef JWKS_ADMIN_H
#define JWKS_ADMIN_H

#include "metrics.h"

struct mg_context;

/*
 * metrics (borrowed, must outlive the context) names the service and what
 * else a scrape reports. Returns 0, or KS_ECRYPTO when the page's
 * Content-Security-Policy could not be computed.
 */
int jwks_admin_register(struct mg_context *ctx,
			const struct jwks_metrics_sources *metrics);

#endif /* JWKS_ADMIN_H */
