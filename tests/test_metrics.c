/*
 * The request counters of server/metrics.c: off until enabled, exact
 * under concurrent threads, buckets by their upper bound, and a rendering
 * whose histograms are cumulative and agree with their counts.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwks_http.h"
#include "metrics.h"
#include "service.h"
#include "test.h"

/* The value of the series that starts with prefix (exactly), or -1. */
static double series(const char *text, const char *name_labels)
{
	size_t n = strlen(name_labels);
	const char *p = text;

	while ((p = strstr(p, name_labels)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p += n;
	}
	return -1;
}

#define THREADS 4
#define PER_THREAD 100000

static void *observer(void *arg)
{
	int i;

	(void)arg;
	for (i = 0; i < PER_THREAD; i++)
		jwks_metrics_observe(JWKS_ROUTE_JWKS, i % 2 ? 304 : 200, 50);
	return NULL;
}

int main(void)
{
	struct jwks_metrics_sources src = {NULL, NULL, NULL, NULL, "test", 0};
	pthread_t tid[THREADS];
	size_t len = 0;
	char *text;
	int i;

	/* Off: nothing counted. */
	jwks_metrics_observe(JWKS_ROUTE_AUTH, 200, 10);
	text = jwks_metrics_render(&src, &len);
	CHECK(text && strlen(text) == len, "render");
	CHECK(series(text, "jwksd_http_requests_total{route=\"auth\","
			   "code=\"200\"}") < 0,
	      "nothing counted before jwks_metrics_enable():\n%s", text);
	free(text);

	jwks_metrics_enable();
	/* Bounds are inclusive: 100 us is in le=0.0001, 101 in the next. */
	jwks_metrics_observe(JWKS_ROUTE_AUTH, 200, 100);
	jwks_metrics_observe(JWKS_ROUTE_AUTH, 200, 101);
	jwks_metrics_observe(JWKS_ROUTE_AUTH, 401, 2000000);
	jwks_metrics_observe(JWKS_ROUTE_AUTH, 418, 99000000);
	jwks_metrics_observe(-5, 200, 1);
	for (i = 0; i < THREADS; i++)
		CHECK(pthread_create(&tid[i], NULL, observer, NULL) == 0,
		      "thread");
	for (i = 0; i < THREADS; i++)
		pthread_join(tid[i], NULL);

	text = jwks_metrics_render(&src, &len);
	CHECK(text != NULL, "render");
	if (!text)
		return TEST_REPORT();
	CHECK(series(text, "jwksd_build_info{version=\"test\"}") == 1,
	      "build info");
	CHECK(series(text, "jwksd_http_requests_total{route=\"auth\","
			   "code=\"200\"}") == 2,
	      "auth 200");
	CHECK(series(text, "jwksd_http_requests_total{route=\"auth\","
			   "code=\"401\"}") == 1,
	      "auth 401");
	CHECK(series(text, "jwksd_http_requests_total{route=\"auth\","
			   "code=\"other\"}") == 1,
	      "a code not in the table");
	CHECK(series(text, "jwksd_http_requests_total{route=\"other\","
			   "code=\"200\"}") == 1,
	      "an unknown route");
	CHECK(series(text, "jwksd_http_request_duration_seconds_bucket{route="
			   "\"auth\",le=\"0.0001\"}") == 1,
	      "100 us in the 100 us bucket");
	CHECK(series(text, "jwksd_http_request_duration_seconds_bucket{route="
			   "\"auth\",le=\"0.00025\"}") == 2,
	      "101 us in the next, cumulative");
	CHECK(series(text, "jwksd_http_request_duration_seconds_bucket{route="
			   "\"auth\",le=\"2.5\"}") == 3,
	      "2 s");
	CHECK(series(text, "jwksd_http_request_duration_seconds_bucket{route="
			   "\"auth\",le=\"10\"}") == 3,
	      "99 s is past the last bound");
	CHECK(series(text, "jwksd_http_request_duration_seconds_bucket{route="
			   "\"auth\",le=\"+Inf\"}") == 4,
	      "+Inf holds all");
	CHECK(series(text, "jwksd_http_request_duration_seconds_count{route="
			   "\"auth\"}") == 4,
	      "count");
	CHECK(series(text, "jwksd_http_request_duration_seconds_sum{route="
			   "\"auth\"}") == 101.000201,
	      "sum in seconds");
	/* Exact under threads: no increment lost. */
	CHECK(series(text, "jwksd_jwks_responses_total{code=\"200\"}") ==
		      THREADS * PER_THREAD / 2,
	      "jwks 200 from %d threads", THREADS);
	CHECK(series(text, "jwksd_jwks_responses_total{code=\"304\"}") ==
		      THREADS * PER_THREAD / 2,
	      "jwks 304 from %d threads", THREADS);
	CHECK(series(text, "jwksd_http_request_duration_seconds_count{route="
			   "\"jwks\"}") == THREADS * PER_THREAD,
	      "jwks count");
	CHECK(series(text, "process_resident_memory_bytes") > 0, "rss");
	CHECK(series(text, "process_open_fds") > 0, "fds");
	CHECK(series(text, "process_cpu_seconds_total") >= 0, "cpu");
	CHECK(series(text, "process_start_time_seconds") > 1.7e9, "start");
	/* No service given: none of its series. */
	CHECK(!strstr(text, "jwksd_tokens_issued_total"), "no service");
	free(text);
	return TEST_REPORT();
}
