/*
 * The jwksd service: token issuance, key selection and the published key set.
 *
 * A service sits on an open key store. It parses the unexpired keys once and
 * keeps an immutable snapshot: the signing key, the published keys and the
 * serialized JWKS body with its ETag. Requests read the current snapshot and
 * never touch the store; a change (a new key, an expiry boundary, a change
 * another process made to the store) builds a new snapshot and swaps it in,
 * and the old one is freed when its last reader is done. Expired keys are
 * parsed only when a token signed with one is asked for.
 *
 * A background thread watches the store's change counter (every poll_ms),
 * rebuilds the snapshot when the key set changed, and rotates keys on the
 * schedule of include/lifecycle.h: a successor is published well before it
 * signs, and a retired key stays published until its tokens expired.
 *
 * With a kek, keys the service makes are stored sealed to their kid, and
 * sealed keys are opened with it; see include/keyadmin.h.
 *
 * The service is a library: any program that runs CivetWeb can register the
 * routes on its own context with jwks_http_register(); server/main.c is one
 * such program.
 *
 * Thread safety: jwks_service_issue() and jwks_service_jwks() may be called
 * from any number of threads once jwks_service_new() has returned; they
 * wait (up to ready_timeout_ms) until jwks_service_start() has published the
 * first snapshot.
 */
#ifndef JWKS_SERVICE_H
#define JWKS_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "jwks_error.h"
#include "keystore.h"

struct jwks_service;
struct mg_context;
struct kek;

/* A clock: seconds since the Unix epoch. Injectable for tests. */
typedef int64_t (*jwks_clock_fn)(void *arg);

/* Where the service writes its own log lines (background work only). */
typedef void (*jwks_log_fn)(void *arg, const char *line);

/*
 * token_ttl: lifetime of an issued token, seconds (> 0). A token's exp is
 *       also never later than its signing key's expiry (less the margin).
 * key_ttl: how long a generated key is published in all, seconds; it must
 *       leave time to sign (see lc_policy_check()).
 * jwks_max_age: the longest Cache-Control max-age of the JWKS, seconds.
 * margin: safety margin for caches and clocks, seconds.
 * rotation_lead: how much earlier than needed a successor is made.
 * kek: the key-encryption key (borrowed), or NULL to store keys as PEM.
 * algs: the JWS algorithms to sign with, NULL-terminated, at most
 *       JWKS_MAX_ALGS, no repeats (NULL: RS256 alone). Each has its own key
 *       schedule; tokens are signed with the first unless asked otherwise.
 * rsa_bits: modulus size of generated RSA keys (0: 2048).
 * issuer: the "iss" claim and the discovery documents' issuer, checked
 *       with jose rules (https, or http on loopback); NULL for none.
 * audiences: the "aud" claim, NULL-terminated, at most JWKS_MAX_AUDIENCES
 *       (NULL or empty: none).
 * token_type: the "typ" header: "JWT" (NULL too) or "at+jwt" (RFC 9068,
 *       which needs an issuer and an audience).
 * poll_ms: how often the store's change counter is checked.
 * ready_timeout_ms: how long a request waits for the first keys.
 * clock, clock_arg: the time source; NULL means time(NULL).
 * log, log_arg: background log lines; NULL means stderr.
 *
 * Everything is copied by jwks_service_new(): the strings need not outlive
 * the call (kek does).
 */
#define JWKS_MAX_ALGS 4
#define JWKS_MAX_AUDIENCES 16

struct jwks_service_options {
	int64_t token_ttl;
	int64_t key_ttl;
	int64_t jwks_max_age;
	int64_t margin;
	int64_t rotation_lead;
	const struct kek *kek;
	const char *const *algs;
	unsigned rsa_bits;
	const char *issuer;
	const char *const *audiences;
	const char *token_type;
	unsigned poll_ms;
	unsigned ready_timeout_ms;
	jwks_clock_fn clock;
	void *clock_arg;
	jwks_log_fn log;
	void *log_arg;
};

#define JWKS_SERVICE_OPTIONS_INIT                                              \
	{                                                                      \
		.token_ttl = 3600, .key_ttl = 86400, .jwks_max_age = 300,      \
		.margin = 300, .rotation_lead = 60, .kek = NULL, .algs = NULL, \
		.rsa_bits = 0, .issuer = NULL, .audiences = NULL,              \
		.token_type = NULL, .poll_ms = 250, .ready_timeout_ms = 10000, \
		.clock = NULL, .clock_arg = NULL, .log = NULL,                 \
		.log_arg = NULL,                                               \
	}

/*
 * Create a service on store (borrowed: it must stay open until
 * jwks_service_free()) and load the store's unexpired keys. Generates
 * nothing and starts no thread. *out is the caller's, freed with
 * jwks_service_free().
 *
 * Returns 0, KS_EINVAL (bad options; err says which), KS_EIO/KS_EBUSY
 * (store read failed). A key row that cannot be parsed (or opened with the
 * kek) is skipped with a log line.
 */
int jwks_service_new(struct jwks_service **out, struct ks_store *store,
		     const struct jwks_service_options *opts,
		     struct ks_err *err);

/*
 * Make sure the store has what the service needs, publish the first
 * snapshot and start the background thread. On an empty store it generates
 * one key that signs at once and one expired key (concurrently); when no
 * published key can sign it adds one that signs at once. Existing keys are
 * never removed; the only change made to one is the extension of a key
 * whose successor comes late (see lc_plan_at()).
 * *key_count_out (may be NULL) receives the number of keys in the store.
 *
 * Returns 0, or the store's error (KS_EACCES, KS_ENOSPC, KS_EBUSY, KS_EIO)
 * or KS_ECRYPTO when a needed key could not be generated or saved.
 */
int jwks_service_start(struct jwks_service *svc, size_t *key_count_out,
		       struct ks_err *err);

/*
 * Do one pass of the background work now, in the calling thread: pick up
 * changes to the store, rebuild the snapshot at an expiry boundary, and
 * rotate keys when due. The background thread does the same every
 * poll_ms; a program that drives its own clock (tests) calls this after
 * moving it.
 */
void jwks_service_tick(struct jwks_service *svc);

/* Stop the background thread and free everything. svc may be NULL. */
void jwks_service_free(struct jwks_service *svc);

/*
 * What a token is asked for. alg: one of the configured algorithms (NULL:
 * the first). expired: signed with an expired key, for testing relying
 * parties. sub, preferred_username: the authenticated subject's claims
 * (NULL: none; accounts set them).
 */
struct jwks_issue_request {
	const char *alg;
	int expired;
	const char *sub;
	const char *preferred_username;
	int64_t *kid_out; /* may be NULL: receives the kid that signed */
};

#define JWKS_ISSUE_REQUEST_INIT           \
	{                                 \
		NULL, 0, NULL, NULL, NULL \
	}

/*
 * Issue a signed JWT (compact serialization) into out, capacity cap
 * (JWKS_TOKEN_MAX suffices), NUL-terminated; *len_out is its length.
 * Claims: iss and aud as configured, sub and preferred_username as asked,
 * iat, nbf (= iat), exp and jti (128 random bits, base64url).
 * Not expired: signed with the key lc_choose_signer() picks among the
 * algorithm's keys, exp = min(now + token_ttl, lc_token_cap()). Expired:
 * signed with the algorithm's most recently expired key that is not
 * revoked, exp in the past. The header's alg is always the key's.
 *
 * Returns 0, KS_EUNSUPPORTED (alg is not configured), KS_ENOKEY (no key
 * can sign: the store could not be written), KS_ENOTFOUND (expired asked
 * for and the store has no expired key of the algorithm), KS_ECRYPTO,
 * KS_EINVAL (a sub too long for a token).
 */
#define JWKS_TOKEN_MAX 4096
int jwks_service_issue(struct jwks_service *svc,
		       const struct jwks_issue_request *req, char *out,
		       size_t cap, size_t *len_out, struct ks_err *err);

/*
 * Whether alg is one the service signs with (exact comparison): 1 or 0.
 */
int jwks_service_has_alg(const struct jwks_service *svc, const char *alg);

/*
 * The published key set, as served: the serialized body ({"keys":[...]}),
 * its strong ETag (with quotes; it changes exactly when the body does),
 * when the body last changed (seconds since the epoch), and how long a
 * cache may keep it: never past the next scheduled change of the set, nor
 * past jwks_max_age.
 */
struct jwks_doc {
	const char *body;
	size_t body_len;
	const char *etag;
	int64_t last_modified;
	int64_t max_age;
};

/*
 * fn is called once with the current document, borrowed for the duration
 * of the call. Returns fn's value, or KS_ENOKEY if the first snapshot was
 * not ready in time.
 */
typedef int (*jwks_doc_fn)(const struct jwks_doc *doc, void *arg);
int jwks_service_jwks(struct jwks_service *svc, jwks_doc_fn fn, void *arg);

/*
 * The issuer's discovery metadata (see jose_metadata()), the same document
 * for /.well-known/openid-configuration and
 * /.well-known/oauth-authorization-server, with its ETag and the time the
 * service started as its last change; max_age is jwks_max_age. fn is
 * called with it as for jwks_service_jwks(). Returns fn's value, or
 * KS_ENOTFOUND when no issuer is configured.
 */
int jwks_service_metadata(struct jwks_service *svc, jwks_doc_fn fn, void *arg);

/*
 * Publish a snapshot of the keys the store holds now, without generating
 * any and without a background thread: for a program that only reads the
 * key set (`jwksd keys export-public`). Returns 0 or the store's errors.
 */
int jwks_service_publish(struct jwks_service *svc, struct ks_err *err);

/*
 * What operators see. Store operations that fail are counted by kind: the
 * change check, a listing, and a write (a new key).
 */
#define JWKS_STORE_OP_CHECK 0
#define JWKS_STORE_OP_LIST 1
#define JWKS_STORE_OP_WRITE 2
#define JWKS_STORE_OPS 3
#define JWKS_KEY_STATES 5 /* indexed by enum lc_state */

/*
 * now: the service's clock. Per configured algorithm: its name, tokens
 * signed, and whether a key can sign now. store_errors: failed background
 * store operations by kind. sync_age_ms: since the store last answered
 * the background work (-1: never). keys: the records of the last listing
 * by state at now. next_change: the next time a key activates, retires or
 * expires (INT64_MAX: none scheduled).
 */
struct jwks_service_stats {
	int64_t now;
	size_t n_algs;
	const char *algs[JWKS_MAX_ALGS];
	uint64_t tokens[JWKS_MAX_ALGS];
	int can_sign[JWKS_MAX_ALGS];
	uint64_t store_errors[JWKS_STORE_OPS];
	int64_t sync_age_ms;
	size_t keys[JWKS_KEY_STATES];
	int64_t next_change;
};

/* Fill *out from memory, without a store call. Returns 0 or KS_EINVAL. */
int jwks_service_stats(struct jwks_service *svc,
		       struct jwks_service_stats *out);

/* "check", "list" or "write". */
const char *jwks_service_store_op_name(int op);

/*
 * Whether the service can answer for a load balancer: every configured
 * algorithm has a key that signs, and the store answered within
 * max_stale_ms. 1, or 0 with *why a fixed reason ("starting", "no signing
 * key", "key store unreachable").
 */
int jwks_service_ready(struct jwks_service *svc, int64_t max_stale_ms,
		       const char **why);

/*
 * The key schedule of the last listing as `jwksd keys list --json` prints
 * it (public facts only: kids, algorithms, times, states), malloc'd and
 * NUL-terminated, *len_out its length; NULL without memory.
 */
char *jwks_service_keys_json(struct jwks_service *svc, size_t *len_out);

/*
 * What jwks_http_register() mounts: the issuer, and its accounts (NULL:
 * an open issuer without /register, whose POST /auth takes any
 * Authorization header and body, as the assignment's does). Both are
 * borrowed and, like this struct, must outlive the context.
 */
struct jwks_accounts;
struct jwks_http_routes {
	struct jwks_service *svc;
	struct jwks_accounts *acct;
	int64_t ready_max_stale_ms; /* /readyz's bound (0: 10 s) */
};

/*
 * Register jwksd's routes (POST /auth, GET/HEAD /.well-known/jwks.json,
 * with an issuer the two discovery documents, with accounts POST
 * /register, and the probes GET/HEAD /healthz and /readyz) on a running
 * CivetWeb context. With catch_all set, every
 * other path answers a JSON 404, and CivetWeb's per-directory .htpasswd
 * lookup is turned off (for a program that serves nothing else).
 */
void jwks_http_register(struct mg_context *ctx,
			const struct jwks_http_routes *routes, int catch_all);

struct mg_connection;

/* The routes, as requests are counted and logged. */
enum jwks_http_route {
	JWKS_ROUTE_OTHER,
	JWKS_ROUTE_AUTH,
	JWKS_ROUTE_JWKS,
	JWKS_ROUTE_DISCOVERY,
	JWKS_ROUTE_REGISTER,
	JWKS_ROUTE_HEALTHZ,
	JWKS_ROUTE_READYZ,
	JWKS_ROUTE_METRICS,
	JWKS_ROUTE_KEYS,
	JWKS_ROUTE_TIMELINE,
	JWKS_ROUTES
};

/*
 * What the routes recorded about the request the calling thread answered
 * last: its route, the body bytes sent, and the kid that signed a token
 * (0: none). CivetWeb runs a request's handler and its end_request
 * callback on one worker thread, where this is read; reading clears it
 * and frees a request body jwks_http_screen read that no route took: call
 * it from end_request when the screen is used.
 */
struct jwks_http_note {
	int route;
	uint64_t bytes;
	int64_t kid;
};

void jwks_http_last_note(struct jwks_http_note *out);

/*
 * For CivetWeb's begin_request callback: refuse, before any route runs, a
 * request that no route should see, with a JSON error, closing the
 * connection: both Content-Length and Transfer-Encoding (or a coding other
 * than chunked), a declared body over max_body bytes (413, without reading
 * it), HTTP/1.1 without Host, more than one Host, a Host other than the
 * authority of an absolute-form target (400), any protocol upgrade. A
 * chunked body is read here, at most max_body bytes (more: 413, the rest
 * left unread), and kept for the route on this thread. Returns 0 to let
 * the request through, or the status sent.
 */
int jwks_http_screen(struct mg_connection *conn, long long max_body);

/*
 * For CivetWeb's http_error callback: CivetWeb's own errors (malformed
 * requests, oversized headers, bad Content-Length) answered as JSON, and
 * the connection closed. Returns 0 (handled).
 */
int jwks_http_error_page(struct mg_connection *conn, int status);

/*
 * Answer this connection's current request with "Connection: close" and
 * close it afterwards; for a server whose worker threads are all taken by
 * kept-alive connections, so that queued ones get a turn.
 */
void jwks_http_close_after(struct mg_connection *conn);

/*
 * For a server that is stopping: answer 503 {"error":"shutting down"} with
 * Retry-After and close the connection, so that the requests already in
 * flight can finish without new ones arriving behind them. Returns 503.
 */
int jwks_http_shutting_down(struct mg_connection *conn);

#endif /* JWKS_SERVICE_H */
