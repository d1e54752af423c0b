/*
 * The access log: one JSON line per request, written by a background
 * thread from a bounded queue (a ring of fixed-size slots).
 *
 * INTERNAL to server/ (main.c and its tests).
 *
 * Line format (JSON Lines, one object per line, keys in this order):
 *
 *   {"time":"2026-12-02T14:03:05.123456Z","client":"127.0.0.1",
 *    "method":"POST","path":"/auth","query":["expired"],"status":200,
 *    "bytes":812,"duration_us":153,"kid":"7"}
 *
 * (one line in the file; wrapped here)
 *
 *   time         request start, UTC, microseconds
 *   client       the peer's address
 *   method       the request method
 *   path         the request path as sent, without the query
 *   query        the NAMES of the query parameters, in order, as sent
 *                (percent-encoding kept); never their values. Omitted
 *                when the request had no query.
 *   status       the HTTP status answered
 *   bytes        response body bytes
 *   duration_us  from request start to the end of the answer
 *   kid          the key that signed a token in this answer, a string as
 *                in the JWT header. Omitted when no token was signed.
 *
 * Every string is JSON-escaped: '"' and '\' with a backslash; control
 * bytes, DEL and bytes that are not part of valid UTF-8 as \u00XX (so
 * \u00e9 is the raw byte 0xE9, while a valid "é" appears as itself). A
 * line never holds a raw newline. A string too long for its share of the
 * line (path 512 bytes escaped, client 64, method 32, each query name 64,
 * the query list 192) is cut at a character boundary and ends in "...";
 * a query list cut short ends with the element "...".
 *
 * Threads: jwks_access_log_write() may be called from any thread, and
 * never blocks on I/O: it formats the line on the caller's stack and
 * copies it into the ring under a mutex held only for that copy. A full
 * ring drops the new line and counts it; the writer reports drops on
 * stderr at most once a minute ("jwksd: access log: N lines dropped
 * (queue full)"), and jwks_access_log_close() reports the rest.
 */
#ifndef JWKS_ACCESSLOG_H
#define JWKS_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>

/* The longest line, newline included; one slot of the ring. */
#define JWKS_ACCESS_LINE_MAX 1024

/* Lines the ring holds when the caller asks for 0. */
#define JWKS_ACCESS_LOG_QUEUE 1024

/* The most lines a ring may hold. */
#define JWKS_ACCESS_LOG_QUEUE_MAX (1u << 20)

struct jwks_access_log;

/* What one request was; strings are borrowed for the call. */
struct jwks_access_entry {
	int64_t time_us;    /* CLOCK_REALTIME at request start, microseconds */
	const char *client; /* peer address text */
	const char *method; /* may be NULL: "" */
	const char *path;   /* local URI, no query; may be NULL: "" */
	const char *query;  /* raw query string or NULL: only its NAMES are
				logged */
	int status;	    /* HTTP status answered */
	uint64_t bytes;	    /* response body bytes */
	uint64_t duration_us;
	int64_t kid; /* key that signed a token, 0 none */
};

/*
 * Open the log at path ("-": stderr) with a ring of queue_lines slots (0:
 * JWKS_ACCESS_LOG_QUEUE) and start its writer thread.
 *
 * A regular file (or anything that opens without blocking) is opened here,
 * O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, mode 0640 minus the umask, so that
 * a bad path fails the start; a FIFO that no one reads yet is opened by
 * the writer thread, so that it never blocks the start or a request.
 *
 * Returns 0 with *out set (ownership: new, free with
 * jwks_access_log_close()), or KS_EIO (cannot open; why says which path
 * and why), KS_EINVAL (empty path, queue_lines over
 * JWKS_ACCESS_LOG_QUEUE_MAX), KS_ENOMEM. why (why_len bytes) may be NULL.
 */
int jwks_access_log_open(struct jwks_access_log **out, const char *path,
			 size_t queue_lines, char *why, size_t why_len);

/* Format e into a line and queue it; drops it (counted) when full. */
void jwks_access_log_write(struct jwks_access_log *log,
			   const struct jwks_access_entry *e);

/*
 * Ask the writer to reopen the path (log rotation: the old file was
 * renamed; a new one is created). Returns at once; lines queued before
 * the reopen may go to either file, none is lost. No-op for stderr. If
 * the new open fails, the writer says so on stderr and keeps the old file.
 */
void jwks_access_log_reopen(struct jwks_access_log *log);

/* Lines dropped so far because the ring was full. */
uint64_t jwks_access_log_dropped(const struct jwks_access_log *log);

/*
 * Flush and close: waits about a second for the writer to write what is
 * queued, then tells it to give up (a FIFO or pipe no one reads: the
 * writer only ever waits on it in short steps), and waits about a second
 * more; a writer stuck inside the kernel even so (a dead disk) is left
 * behind with its memory, so this never hangs. Reports on stderr the
 * drops not reported yet and the lines left unwritten. NULL is a no-op.
 */
void jwks_access_log_close(struct jwks_access_log *log);

/*
 * Format e as one line, newline included, into out (at least
 * JWKS_ACCESS_LINE_MAX bytes, not NUL-terminated). Returns its length.
 * For tests; jwks_access_log_write() uses it.
 */
size_t jwks_access_log__format(char *out, const struct jwks_access_entry *e);

#endif /* JWKS_ACCESSLOG_H */
