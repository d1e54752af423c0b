/*
 * Prometheus metrics: see metrics.h. Names follow Prometheus conventions:
 * the jwksd_ prefix, _total for counters, base units (seconds, bytes).
 */
#define _DEFAULT_SOURCE

#include <dirent.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "accounts.h"
#include "jwks_http.h"
#include "lifecycle.h"
#include "metrics.h"
#include "service.h"

/* The status codes counted one by one; any other is counted as "other". */
static const int met_codes[] = {200, 201, 204, 304, 400, 401, 403,
				404, 405, 408, 409, 411, 413, 414,
				429, 431, 500, 501, 503, 505};
#define MET_CODES (sizeof(met_codes) / sizeof(met_codes[0]))
#define MET_CODE_SLOTS (MET_CODES + 1)

/* Upper bounds of the latency buckets, microseconds; then +Inf. */
static const uint64_t met_bounds_us[] = {
	100,   250,    500,    1000,   2500,	5000,	 10000,	  25000,
	50000, 100000, 250000, 500000, 1000000, 2500000, 10000000};
#define MET_BOUNDS (sizeof(met_bounds_us) / sizeof(met_bounds_us[0]))
#define MET_BUCKETS (MET_BOUNDS + 1)

/*
 * One shard. Threads are spread over the shards as they first count, so
 * that two threads seldom write one cache line; a scrape sums them all.
 */
struct met_shard {
	_Alignas(64) atomic_uint_fast64_t requests[JWKS_ROUTES][MET_CODE_SLOTS];
	atomic_uint_fast64_t buckets[JWKS_ROUTES][MET_BUCKETS];
	atomic_uint_fast64_t sum_us[JWKS_ROUTES];
};

#define MET_SHARDS 16
static struct met_shard met_shards[MET_SHARDS];
static atomic_uint met_next_shard;
static atomic_int met_on;

void jwks_metrics_enable(void)
{
	atomic_store(&met_on, 1);
}

int jwks_metrics_enabled(void)
{
	return atomic_load_explicit(&met_on, memory_order_relaxed);
}

const char *jwks_metrics_route_name(int route)
{
	static const char *const names[JWKS_ROUTES] = {
		"other",   "auth",   "jwks",	"discovery", "register",
		"healthz", "readyz", "metrics", "keys",	     "timeline",
	};

	return route >= 0 && route < JWKS_ROUTES ? names[route] : "other";
}

static size_t met_code_slot(int status)
{
	size_t i;

	for (i = 0; i < MET_CODES; i++)
		if (met_codes[i] == status)
			return i;
	return MET_CODES;
}

static size_t met_bucket(uint64_t us)
{
	size_t i;

	for (i = 0; i < MET_BOUNDS; i++)
		if (us <= met_bounds_us[i])
			return i;
	return MET_BOUNDS;
}

void jwks_metrics_observe(int route, int status, uint64_t duration_us)
{
	static _Thread_local struct met_shard *mine;
	const memory_order rel = memory_order_relaxed;

	if (!jwks_metrics_enabled())
		return;
	if (route < 0 || route >= JWKS_ROUTES)
		route = JWKS_ROUTE_OTHER;
	if (!mine)
		mine = &met_shards[atomic_fetch_add(&met_next_shard, 1) %
				   MET_SHARDS];
	atomic_fetch_add_explicit(&mine->requests[route][met_code_slot(status)],
				  1, rel);
	atomic_fetch_add_explicit(
		&mine->buckets[route][met_bucket(duration_us)], 1, rel);
	atomic_fetch_add_explicit(&mine->sum_us[route], duration_us, rel);
}

/* The sums over the shards. */
struct met_totals {
	uint64_t requests[JWKS_ROUTES][MET_CODE_SLOTS];
	uint64_t buckets[JWKS_ROUTES][MET_BUCKETS];
	uint64_t sum_us[JWKS_ROUTES];
};

static void met_sum(struct met_totals *t)
{
	size_t s, r, i;

	memset(t, 0, sizeof(*t));
	for (s = 0; s < MET_SHARDS; s++) {
		const struct met_shard *sh = &met_shards[s];

		for (r = 0; r < JWKS_ROUTES; r++) {
			for (i = 0; i < MET_CODE_SLOTS; i++)
				t->requests[r][i] +=
					atomic_load(&sh->requests[r][i]);
			for (i = 0; i < MET_BUCKETS; i++)
				t->buckets[r][i] +=
					atomic_load(&sh->buckets[r][i]);
			t->sum_us[r] += atomic_load(&sh->sum_us[r]);
		}
	}
}

/* A growing text buffer; on failure it stays failed and render gives NULL. */
struct met_buf {
	char *p;
	size_t len, cap;
	int failed;
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
met_printf(struct met_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = 1;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		char *grown = realloc(b->p, b->cap * 2 + (size_t)n);

		if (!grown) {
			b->failed = 1;
			return;
		}
		b->p = grown;
		b->cap = b->cap * 2 + (size_t)n;
	}
}

static void met_head(struct met_buf *b, const char *name, const char *type,
		     const char *help)
{
	met_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void met_requests(struct met_buf *b, const struct met_totals *t)
{
	size_t r, i;

	met_head(b, "jwksd_http_requests_total", "counter",
		 "HTTP requests answered, by route and status code.");
	for (r = 0; r < JWKS_ROUTES; r++)
		for (i = 0; i < MET_CODE_SLOTS; i++) {
			if (!t->requests[r][i])
				continue;
			if (i < MET_CODES)
				met_printf(
					b,
					"jwksd_http_requests_total{route="
					"\"%s\",code=\"%d\"} %llu\n",
					jwks_metrics_route_name((int)r),
					met_codes[i],
					(unsigned long long)t->requests[r][i]);
			else
				met_printf(
					b,
					"jwksd_http_requests_total{route="
					"\"%s\",code=\"other\"} %llu\n",
					jwks_metrics_route_name((int)r),
					(unsigned long long)t->requests[r][i]);
		}
	met_head(b, "jwksd_http_request_duration_seconds", "histogram",
		 "Time from the start of a request to the end of its answer, "
		 "by route.");
	for (r = 0; r < JWKS_ROUTES; r++) {
		const char *route = jwks_metrics_route_name((int)r);
		uint64_t cum = 0;

		for (i = 0; i < MET_BUCKETS; i++)
			cum += t->buckets[r][i];
		if (!cum)
			continue;
		cum = 0;
		for (i = 0; i < MET_BUCKETS; i++) {
			cum += t->buckets[r][i];
			if (i < MET_BOUNDS)
				met_printf(b,
					   "jwksd_http_request_duration_"
					   "seconds_bucket{route=\"%s\",le=\"%g"
					   "\"} %llu\n",
					   route,
					   (double)met_bounds_us[i] / 1e6,
					   (unsigned long long)cum);
			else
				met_printf(b,
					   "jwksd_http_request_duration_"
					   "seconds_bucket{route=\"%s\",le=\"+"
					   "Inf\"} %llu\n",
					   route, (unsigned long long)cum);
		}
		met_printf(b,
			   "jwksd_http_request_duration_seconds_sum{route=\"%s"
			   "\"} %.6f\n",
			   route, (double)t->sum_us[r] / 1e6);
		met_printf(b,
			   "jwksd_http_request_duration_seconds_count{route="
			   "\"%s\"} %llu\n",
			   route, (unsigned long long)cum);
	}
	met_head(
		b, "jwksd_jwks_responses_total", "counter",
		"Answers to GET and HEAD of the key set: 200 with the body, or "
		"304 to a client whose copy is current.");
	met_printf(b, "jwksd_jwks_responses_total{code=\"200\"} %llu\n",
		   (unsigned long long)
			   t->requests[JWKS_ROUTE_JWKS][met_code_slot(200)]);
	met_printf(b, "jwksd_jwks_responses_total{code=\"304\"} %llu\n",
		   (unsigned long long)
			   t->requests[JWKS_ROUTE_JWKS][met_code_slot(304)]);
}

static void met_service(struct met_buf *b, const struct jwks_metrics_sources *s)
{
	struct jwks_service_stats st;
	const char *why;
	size_t i;

	if (jwks_service_stats(s->svc, &st))
		return;
	met_head(b, "jwksd_tokens_issued_total", "counter",
		 "Tokens signed, by algorithm (?expired=true ones included).");
	for (i = 0; i < st.n_algs; i++)
		met_printf(b, "jwksd_tokens_issued_total{alg=\"%s\"} %llu\n",
			   st.algs[i], (unsigned long long)st.tokens[i]);
	met_head(b, "jwksd_signing_key_available", "gauge",
		 "1 when the algorithm has a key that signs now.");
	for (i = 0; i < st.n_algs; i++)
		met_printf(b, "jwksd_signing_key_available{alg=\"%s\"} %d\n",
			   st.algs[i], st.can_sign[i] ? 1 : 0);
	met_head(b, "jwksd_keys", "gauge",
		 "Keys in the store by state: pending (published, not signing "
		 "yet), active (signing), retired (published, no longer "
		 "signing), expired, revoked.");
	for (i = 0; i < JWKS_KEY_STATES; i++)
		met_printf(b, "jwksd_keys{state=\"%s\"} %zu\n",
			   lc_state_name((enum lc_state)i), st.keys[i]);
	if (st.next_change != INT64_MAX) {
		met_head(b, "jwksd_next_key_change_seconds", "gauge",
			 "Seconds until a key next activates, retires or "
			 "expires.");
		met_printf(b, "jwksd_next_key_change_seconds %lld\n",
			   (long long)(st.next_change - st.now));
	}
	met_head(b, "jwksd_store_errors_total", "counter",
		 "Failed background store operations, by operation.");
	for (i = 0; i < JWKS_STORE_OPS; i++)
		met_printf(b, "jwksd_store_errors_total{op=\"%s\"} %llu\n",
			   jwks_service_store_op_name((int)i),
			   (unsigned long long)st.store_errors[i]);
	if (st.sync_age_ms >= 0) {
		met_head(b, "jwksd_store_sync_age_seconds", "gauge",
			 "Seconds since the store last answered the "
			 "background synchronisation.");
		met_printf(b, "jwksd_store_sync_age_seconds %.3f\n",
			   (double)st.sync_age_ms / 1000.0);
	}
	met_head(b, "jwksd_ready", "gauge",
		 "1 when /readyz answers 200: every algorithm can sign and "
		 "the store answered recently.");
	met_printf(b, "jwksd_ready %d\n",
		   jwks_service_ready(s->svc, s->ready_max_stale_ms, &why));
}

static void met_counter(struct met_buf *b, const char *name, const char *help,
			uint64_t v)
{
	met_head(b, name, "counter", help);
	met_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void met_accounts(struct met_buf *b,
			 const struct jwks_metrics_sources *s)
{
	struct jwks_accounts_stats st;

	if (s->acct) {
		jwks_accounts_stats(s->acct, &st);
		met_counter(b, "jwksd_login_failures_total",
			    "Logins refused: wrong password or locked user.",
			    st.login_failures);
		met_counter(b, "jwksd_rate_limited_total",
			    "Requests answered 429 by a rate limit.",
			    st.rate_limited);
		met_counter(b, "jwksd_auth_log_written_total",
			    "Auth-log entries written to the store.",
			    st.log_written);
		met_counter(b, "jwksd_auth_log_dropped_total",
			    "Auth-log entries dropped because the queue to a "
			    "slow store was full.",
			    st.log_dropped);
	}
	if (s->access_log_dropped)
		met_counter(b, "jwksd_access_log_dropped_total",
			    "Access-log lines dropped because the queue was "
			    "full.",
			    s->access_log_dropped(s->access_log_arg));
}

/* The standard process_* metrics, from /proc/self. */
static void met_process(struct met_buf *b)
{
	unsigned long long utime = 0, stime = 0, start = 0, vsize = 0;
	long long rss = 0, btime = 0;
	long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	char line[1024], *p;
	struct rlimit rl;
	struct dirent *de;
	size_t fds = 0;
	DIR *dir;
	FILE *f;

	f = fopen("/proc/self/stat", "r");
	if (f && fgets(line, sizeof(line), f) && (p = strrchr(line, ')')) &&
	    sscanf(p + 2,
		   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu "
		   "%*d %*d %*d %*d %*d %*d %llu %llu %lld",
		   &utime, &stime, &start, &vsize, &rss) == 5 &&
	    ticks > 0) {
		met_head(b, "process_cpu_seconds_total", "counter",
			 "Total user and system CPU time spent in seconds.");
		met_printf(b, "process_cpu_seconds_total %.2f\n",
			   (double)(utime + stime) / (double)ticks);
		met_head(b, "process_virtual_memory_bytes", "gauge",
			 "Virtual memory size in bytes.");
		met_printf(b, "process_virtual_memory_bytes %llu\n", vsize);
		met_head(b, "process_resident_memory_bytes", "gauge",
			 "Resident memory size in bytes.");
		met_printf(b, "process_resident_memory_bytes %lld\n",
			   rss * (long long)page);
	}
	if (f)
		fclose(f);
	f = fopen("/proc/stat", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "btime %lld", &btime) == 1)
			break;
	if (f)
		fclose(f);
	if (btime > 0 && ticks > 0) {
		met_head(b, "process_start_time_seconds", "gauge",
			 "Start time of the process since unix epoch in "
			 "seconds.");
		met_printf(b, "process_start_time_seconds %.2f\n",
			   (double)btime + (double)start / (double)ticks);
	}
	dir = opendir("/proc/self/fd");
	if (dir) {
		while ((de = readdir(dir)) != NULL)
			fds += de->d_name[0] != '.';
		closedir(dir);
		met_head(b, "process_open_fds", "gauge",
			 "Number of open file descriptors.");
		/* Less the one this count held open. */
		met_printf(b, "process_open_fds %zu\n", fds ? fds - 1 : 0);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		met_head(b, "process_max_fds", "gauge",
			 "Maximum number of open file descriptors.");
		met_printf(b, "process_max_fds %llu\n",
			   (unsigned long long)rl.rlim_cur);
	}
}

char *jwks_metrics_render(const struct jwks_metrics_sources *src,
			  size_t *len_out)
{
	struct met_buf b = {malloc(16384), 0, 16384, 0};
	struct met_totals *t = malloc(sizeof(*t));

	if (!b.p || !t) {
		free(b.p);
		free(t);
		return NULL;
	}
	b.p[0] = '\0';
	met_sum(t);
	met_head(&b, "jwksd_build_info", "gauge",
		 "Always 1; the version of jwksd serving.");
	met_printf(&b, "jwksd_build_info{version=\"%s\"} 1\n",
		   src->version ? src->version : "unknown");
	met_requests(&b, t);
	met_service(&b, src);
	met_accounts(&b, src);
	met_process(&b);
	free(t);
	if (b.failed) {
		free(b.p);
		return NULL;
	}
	if (len_out)
		*len_out = b.len;
	return b.p;
}
