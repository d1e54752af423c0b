/*
 * The access log: see server/accesslog.h.
 *
 * Locks: lock guards the ring (slots, head, count, accepted) and the
 * flags between the writer and the rest; it is held only for memory
 * work. The writer takes a batch of lines out under it and writes them
 * without it.
 *
 * Never hang: the log is opened O_NONBLOCK (a FIFO without a reader is
 * retried every ACC_RETRY_MS; a full pipe is waited for with poll() in
 * steps of ACC_RETRY_MS), so the writer notices a close within that step
 * wherever it waits. A writer stuck inside the kernel anyway (a write to
 * a dead disk, or to stderr) is left behind by close after a bounded wait.
 * The writer is not cancelled with pthread_cancel(): cancellation cannot
 * interrupt such a write either, and AddressSanitizer reports a false
 * stack-buffer-overflow when a cancelled thread exits
 * (google/sanitizers#1399), which would fail the sanitizer suite.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "accesslog.h"
#include "jwks_error.h"

/* Lines one batch of the writer takes. */
#define ACC_BATCH 64
/* Seconds between two drop reports of the writer. */
#define ACC_REPORT_EVERY_S 60
/* How long close waits for the writer to flush, in milliseconds. */
#define ACC_CLOSE_WAIT_MS 1000
/* Then how long for it to give up and exit. */
#define ACC_ABANDON_WAIT_MS 1000
/* Step of the writer's waits for a FIFO's reader or pipe room. */
#define ACC_RETRY_MS 100

/* Shares of a line, in escaped bytes (the quotes not counted). */
#define ACC_CLIENT_MAX 64
#define ACC_METHOD_MAX 32
#define ACC_PATH_MAX 512
#define ACC_QNAME_MAX 64
#define ACC_QUERY_MAX 192 /* between [ and ] */

/* The fixed text of a line with every number at its widest. */
#define ACC_FIXED_MAX                                                        \
	(sizeof("{\"time\":\"2026-12-02T14:03:05.123456Z\",\"client\":\"") - \
	 1 + sizeof("\",\"method\":\"") - 1 + sizeof("\",\"path\":\"") - 1 + \
	 sizeof("\",\"query\":[") - 1 + sizeof("],\"status\":-2147483648") - \
	 1 + sizeof(",\"bytes\":18446744073709551615") - 1 +                 \
	 sizeof(",\"duration_us\":18446744073709551615") - 1 +               \
	 sizeof(",\"kid\":\"9223372036854775807\"}\n") - 1)

_Static_assert(ACC_FIXED_MAX + ACC_CLIENT_MAX + ACC_METHOD_MAX + ACC_PATH_MAX +
			       ACC_QUERY_MAX <=
		       JWKS_ACCESS_LINE_MAX,
	       "an access log line fits its slot");

struct acc_slot {
	uint32_t len;
	char text[JWKS_ACCESS_LINE_MAX];
};

struct jwks_access_log {
	char *path;  /* NULL: stderr */
	int fd;	     /* the writer's; -1 until a FIFO has a reader */
	char *batch; /* the writer's: ACC_BATCH lines */

	pthread_mutex_t lock;
	pthread_cond_t wake;   /* the writer waits for work */
	pthread_cond_t exited; /* close waits for the writer */
	struct acc_slot *slots;
	size_t cap, head, count;
	uint64_t accepted;
	int stop, reopen, writer_done;
	pthread_t writer;

	atomic_int abandon;	      /* close stopped waiting: write no more */
	atomic_uint_fast64_t dropped; /* ring full */
	atomic_uint_fast64_t written, lost;
	atomic_uint_fast64_t reported; /* drops reported so far */
};

/* ---------------------------------------------------------- formatting */

struct acc_buf {
	char *p;
	size_t len;
};

static void acc_put(struct acc_buf *b, const char *s, size_t n)
{
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void acc_puts(struct acc_buf *b, const char *s)
{
	acc_put(b, s, strlen(s));
}

/*
 * The length of the valid UTF-8 sequence of 2 to 4 bytes at s (at most n
 * bytes), or 0 (RFC 3629: no overlong form, no surrogate, nothing over
 * U+10FFFF).
 */
static size_t acc_utf8_len(const unsigned char *s, size_t n)
{
	unsigned char lo = 0x80, hi = 0xBF;
	size_t len, i;

	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		len = 2;
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
		len = 3;
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
		len = 4;
	else
		return 0;
	if (s[0] == 0xE0)
		lo = 0xA0;
	else if (s[0] == 0xED)
		hi = 0x9F;
	else if (s[0] == 0xF0)
		lo = 0x90;
	else if (s[0] == 0xF4)
		hi = 0x8F;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return len;
}

/*
 * The escaped form of the character at s (n bytes left): writes it into
 * out (at least 6 bytes) and returns its length; *used says how many
 * input bytes it took.
 */
static size_t acc_escape_char(const unsigned char *s, size_t n, char *out,
			      size_t *used)
{
	static const char hex[] = "0123456789abcdef";
	size_t len;

	*used = 1;
	if (s[0] == '"' || s[0] == '\\') {
		out[0] = '\\';
		out[1] = (char)s[0];
		return 2;
	}
	if (s[0] >= 0x20 && s[0] < 0x7F) {
		out[0] = (char)s[0];
		return 1;
	}
	if (s[0] >= 0x80) {
		len = acc_utf8_len(s, n);
		if (len) {
			memcpy(out, s, len);
			*used = len;
			return len;
		}
	}
	/* Control byte, DEL, or a byte outside valid UTF-8. */
	memcpy(out, "\\u00", 4);
	out[4] = hex[s[0] >> 4];
	out[5] = hex[s[0] & 15];
	return 6;
}

/* The escaped length of s (n bytes). */
static size_t acc_escaped_len(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	char tmp[6];
	size_t i = 0, used, len = 0;

	while (i < n) {
		len += acc_escape_char(u + i, n - i, tmp, &used);
		i += used;
	}
	return len;
}

/*
 * s (n bytes) escaped, at most max bytes of it: cut at a character
 * boundary and ended with "..." when it does not fit.
 */
static void acc_put_escaped(struct acc_buf *b, const char *s, size_t n,
			    size_t max)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, used, len, room = max;
	char tmp[6];
	int cut = acc_escaped_len(s, n) > max;

	if (cut)
		room = max - 3;
	while (i < n) {
		len = acc_escape_char(u + i, n - i, tmp, &used);
		if (len > room)
			break;
		acc_put(b, tmp, len);
		room -= len;
		i += used;
	}
	if (cut)
		acc_puts(b, "...");
}

/* A JSON string member ,"key":"value" (first: no comma). */
static void acc_put_member(struct acc_buf *b, const char *key,
			   const char *value, size_t max)
{
	acc_puts(b, ",\"");
	acc_puts(b, key);
	acc_puts(b, "\":\"");
	if (value)
		acc_put_escaped(b, value, strlen(value), max);
	acc_puts(b, "\"");
}

/*
 * The names of a query string: ,"query":["a","b"], nothing when it has
 * none. Each part between '&' is a parameter; its name ends at '='.
 */
static void acc_put_query(struct acc_buf *b, const char *query)
{
	const char *part = query, *amp, *eq;
	size_t room = ACC_QUERY_MAX, nlen, cost;
	int first = 1;

	if (!query)
		return;
	for (; *part; part = *amp ? amp + 1 : amp) {
		amp = part + strcspn(part, "&");
		if (amp == part)
			continue;
		eq = memchr(part, '=', (size_t)(amp - part));
		nlen = (size_t)((eq ? eq : amp) - part);
		if (first)
			acc_puts(b, ",\"query\":[");
		cost = 2 + (first ? 0 : 1);
		nlen = acc_escaped_len(part, nlen) > ACC_QNAME_MAX
			       ? ACC_QNAME_MAX
			       : acc_escaped_len(part, nlen);
		/* Keep room for a final ,"..." element. */
		if (cost + nlen + 6 > room) {
			acc_puts(b, first ? "\"...\"" : ",\"...\"");
			first = 0;
			break;
		}
		if (!first)
			acc_puts(b, ",");
		acc_puts(b, "\"");
		eq = memchr(part, '=', (size_t)(amp - part));
		acc_put_escaped(b, part, (size_t)((eq ? eq : amp) - part),
				ACC_QNAME_MAX);
		acc_puts(b, "\"");
		room -= cost + nlen;
		first = 0;
	}
	if (!first)
		acc_puts(b, "]");
}

size_t jwks_access_log__format(char *out, const struct jwks_access_entry *e)
{
	struct acc_buf b = {out, 0};
	struct tm tm;
	time_t secs;
	int64_t us = e->time_us % 1000000;
	char num[64];

	secs = (time_t)(e->time_us / 1000000);
	if (us < 0) {
		us += 1000000;
		secs--;
	}
	if (!gmtime_r(&secs, &tm) || tm.tm_year + 1900 < 0 ||
	    tm.tm_year + 1900 > 9999)
		memset(&tm, 0, sizeof(tm));
	snprintf(num, sizeof(num),
		 "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\"",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)us);
	acc_puts(&b, num);
	acc_put_member(&b, "client", e->client, ACC_CLIENT_MAX);
	acc_put_member(&b, "method", e->method, ACC_METHOD_MAX);
	acc_put_member(&b, "path", e->path, ACC_PATH_MAX);
	acc_put_query(&b, e->query);
	snprintf(num, sizeof(num),
		 ",\"status\":%d,\"bytes\":%" PRIu64
		 ",\"duration_us\":%" PRIu64,
		 e->status, e->bytes, e->duration_us);
	acc_puts(&b, num);
	if (e->kid > 0) {
		snprintf(num, sizeof(num), ",\"kid\":\"%" PRId64 "\"", e->kid);
		acc_puts(&b, num);
	}
	acc_puts(&b, "}\n");
	return b.len;
}

/* -------------------------------------------------------------- writer */

/* The monotonic time ms milliseconds from now. */
static struct timespec acc_deadline(long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

/*
 * write() all of buf to fd, waiting for room in a pipe until the log is
 * abandoned. Returns 0 or an errno value; *done is the bytes written.
 */
static int acc_write_all(const struct jwks_access_log *log, int fd,
			 const char *buf, size_t len, size_t *done)
{
	struct pollfd pfd = {.fd = fd, .events = POLLOUT};
	ssize_t n;

	*done = 0;
	while (*done < len) {
		n = write(fd, buf + *done, len - *done);
		if (n > 0) {
			*done += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			return errno;
		if (n == 0)
			return EIO;
		if (atomic_load(&log->abandon))
			return ETIMEDOUT;
		poll(&pfd, 1, ACC_RETRY_MS);
	}
	return 0;
}

/* open() for appending without blocking; the fd or -errno. */
static int acc_open(const char *path)
{
	int fd;

	do
		fd = open(path,
			  O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY |
				  O_NONBLOCK,
			  0640);
	while (fd < 0 && errno == EINTR);
	return fd < 0 ? -errno : fd;
}

/* A FIFO no one reads yet (what open() without blocking refuses). */
static int acc_fifo_without_reader(const char *path, int err)
{
	struct stat st;

	return err == ENXIO && !stat(path, &st) && S_ISFIFO(st.st_mode);
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void
acc_say(const char *fmt, ...)
{
	char text[512];
	va_list ap;
	ssize_t n;
	size_t len, off = 0;

	va_start(ap, fmt);
	n = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	len = (size_t)n < sizeof(text) ? (size_t)n : sizeof(text) - 1;
	while (off < len) {
		n = write(2, text + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		off += (size_t)n;
	}
}

/* Report the drops not reported yet (from the writer or close). */
static void acc_report_drops(struct jwks_access_log *log)
{
	uint64_t dropped = atomic_load(&log->dropped);
	uint64_t reported = atomic_load(&log->reported);

	if (dropped == reported)
		return;
	atomic_store(&log->reported, dropped);
	acc_say("jwksd: access log: %" PRIu64 " lines dropped (queue full)\n",
		dropped - reported);
}

/*
 * (Re)open the path from the writer; keeps the old fd on failure. A FIFO
 * without a reader is said once and retried; *said_fifo remembers.
 */
static void acc_writer_open(struct jwks_access_log *log, int *said_fifo)
{
	int fd = acc_open(log->path);

	if (fd >= 0) {
		if (log->fd >= 0)
			close(log->fd);
		log->fd = fd;
		*said_fifo = 0;
		return;
	}
	if (acc_fifo_without_reader(log->path, -fd)) {
		if (!*said_fifo)
			acc_say("jwksd: access log: FIFO '%s' has no reader "
				"yet; waiting for one\n",
				log->path);
		*said_fifo = 1;
		return;
	}
	acc_say("jwksd: access log: cannot open '%s': %s; %s\n", log->path,
		strerror(-fd),
		log->fd >= 0 ? "still writing to the old file"
			     : "lines are lost until a reopen works");
}

static uint64_t acc_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec;
}

/* Write a batch of n lines (len bytes); count them written or lost. */
static void acc_writer_flush(struct jwks_access_log *log, size_t n, size_t len,
			     int *last_err)
{
	size_t done = 0, whole = 0, i;
	int err = log->fd >= 0
			  ? acc_write_all(log, log->fd, log->batch, len, &done)
			  : ENXIO;

	for (i = 0; i < done; i++)
		whole += log->batch[i] == '\n';
	atomic_fetch_add(&log->written, whole);
	if (!err || err == ETIMEDOUT) /* abandoned: counted by close */
		return;
	atomic_fetch_add(&log->lost, n - whole);
	if (err != *last_err && log->fd >= 0)
		acc_say("jwksd: access log: cannot write '%s': %s\n",
			log->path ? log->path : "stderr", strerror(err));
	*last_err = err;
}

static void *acc_writer_main(void *arg)
{
	struct jwks_access_log *log = arg;
	uint64_t last_report = 0;
	int reopen, stop, last_err = 0, said_fifo = 0, woke;
	size_t n, len, i;
	struct timespec until;

	if (log->fd < 0)
		acc_writer_open(log, &said_fifo);
	for (;;) {
		pthread_mutex_lock(&log->lock);
		while (!log->stop && !log->reopen &&
		       (log->fd < 0 || !log->count)) {
			if (log->fd < 0)
				until = acc_deadline(ACC_RETRY_MS);
			else if (atomic_load(&log->dropped) !=
				 atomic_load(&log->reported))
				until = (struct timespec){
					(time_t)(last_report +
						 ACC_REPORT_EVERY_S),
					0};
			else {
				pthread_cond_wait(&log->wake, &log->lock);
				continue;
			}
			woke = pthread_cond_timedwait(&log->wake, &log->lock,
						      &until);
			if (woke == ETIMEDOUT)
				break;
		}
		reopen = log->reopen;
		log->reopen = 0;
		stop = log->stop;
		n = 0;
		len = 0;
		if (log->fd >= 0) {
			n = log->count < ACC_BATCH ? log->count : ACC_BATCH;
			for (i = 0; i < n; i++) {
				const struct acc_slot *s =
					&log->slots[(log->head + i) % log->cap];

				memcpy(log->batch + len, s->text, s->len);
				len += s->len;
			}
			log->head = (log->head + n) % log->cap;
			log->count -= n;
		}
		pthread_mutex_unlock(&log->lock);

		if (log->path && (reopen || (log->fd < 0 && !stop)))
			acc_writer_open(log, &said_fifo);
		if (n)
			acc_writer_flush(log, n, len, &last_err);
		if (atomic_load(&log->dropped) != atomic_load(&log->reported) &&
		    (!last_report ||
		     acc_now_s() >= last_report + ACC_REPORT_EVERY_S)) {
			acc_report_drops(log);
			last_report = acc_now_s();
		}
		/* Stop once drained, or when nothing more can be written. */
		if (stop && (n < ACC_BATCH || log->fd < 0 ||
			     atomic_load(&log->abandon)))
			break;
	}
	pthread_mutex_lock(&log->lock);
	log->writer_done = 1;
	pthread_cond_broadcast(&log->exited);
	pthread_mutex_unlock(&log->lock);
	return NULL;
}

/* ---------------------------------------------------------------- API */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
acc_why(char *why, size_t why_len, const char *fmt, ...)
{
	va_list ap;

	if (!why || !why_len)
		return;
	va_start(ap, fmt);
	vsnprintf(why, why_len, fmt, ap);
	va_end(ap);
}

/* Everything open() allocated; the thread and locks are not set up. */
static void acc_free(struct jwks_access_log *log)
{
	if (!log)
		return;
	if (log->path && log->fd >= 0)
		close(log->fd);
	free(log->path);
	free(log->batch);
	free(log->slots);
	free(log);
}

int jwks_access_log_open(struct jwks_access_log **out, const char *path,
			 size_t queue_lines, char *why, size_t why_len)
{
	struct jwks_access_log *log;
	pthread_condattr_t attr;
	int fd, err;

	if (!out)
		return KS_EINVAL;
	*out = NULL;
	if (!path || !*path || queue_lines > JWKS_ACCESS_LOG_QUEUE_MAX) {
		acc_why(why, why_len, "invalid access log path or queue size");
		return KS_EINVAL;
	}
	if (!queue_lines)
		queue_lines = JWKS_ACCESS_LOG_QUEUE;
	log = calloc(1, sizeof(*log));
	if (!log)
		goto nomem;
	log->fd = -1;
	log->cap = queue_lines;
	log->slots = calloc(queue_lines, sizeof(*log->slots));
	log->batch = malloc((size_t)ACC_BATCH * JWKS_ACCESS_LINE_MAX);
	if (strcmp(path, "-"))
		log->path = strdup(path);
	if (!log->slots || !log->batch || (strcmp(path, "-") && !log->path))
		goto nomem;
	if (!log->path) {
		log->fd = 2; /* blocking: its flags are shared with others */
	} else {
		fd = acc_open(path);
		if (fd < 0 && !acc_fifo_without_reader(path, -fd)) {
			acc_why(why, why_len, "cannot open '%s': %s", path,
				strerror(-fd));
			acc_free(log);
			return KS_EIO;
		}
		log->fd = fd < 0 ? -1 : fd; /* -1: the writer waits */
	}
	pthread_mutex_init(&log->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&log->exited, &attr);
	pthread_cond_init(&log->wake, &attr);
	pthread_condattr_destroy(&attr);
	err = pthread_create(&log->writer, NULL, acc_writer_main, log);
	if (err) {
		pthread_mutex_destroy(&log->lock);
		pthread_cond_destroy(&log->exited);
		pthread_cond_destroy(&log->wake);
		acc_free(log);
		acc_why(why, why_len, "cannot start the writer thread: %s",
			strerror(err));
		return KS_ENOMEM;
	}
	*out = log;
	return 0;
nomem:
	acc_free(log);
	acc_why(why, why_len, "out of memory");
	return KS_ENOMEM;
}

void jwks_access_log_write(struct jwks_access_log *log,
			   const struct jwks_access_entry *e)
{
	struct acc_slot line;
	struct acc_slot *slot;
	int was_empty;

	if (!log || !e)
		return;
	line.len = (uint32_t)jwks_access_log__format(line.text, e);
	pthread_mutex_lock(&log->lock);
	if (log->count == log->cap) {
		pthread_mutex_unlock(&log->lock);
		atomic_fetch_add(&log->dropped, 1);
		return;
	}
	slot = &log->slots[(log->head + log->count) % log->cap];
	slot->len = line.len;
	memcpy(slot->text, line.text, line.len);
	was_empty = !log->count++;
	log->accepted++;
	if (was_empty)
		pthread_cond_signal(&log->wake);
	pthread_mutex_unlock(&log->lock);
}

void jwks_access_log_reopen(struct jwks_access_log *log)
{
	if (!log || !log->path)
		return;
	pthread_mutex_lock(&log->lock);
	log->reopen = 1;
	pthread_cond_signal(&log->wake);
	pthread_mutex_unlock(&log->lock);
}

uint64_t jwks_access_log_dropped(const struct jwks_access_log *log)
{
	return log ? atomic_load(&log->dropped) : 0;
}

/* Wait until the writer is done or ms passed; whether it is done. */
static int acc_wait_writer(struct jwks_access_log *log, long ms)
{
	struct timespec until = acc_deadline(ms);
	int done;

	pthread_mutex_lock(&log->lock);
	while (!log->writer_done &&
	       pthread_cond_timedwait(&log->exited, &log->lock, &until) !=
		       ETIMEDOUT)
		;
	done = log->writer_done;
	pthread_mutex_unlock(&log->lock);
	return done;
}

void jwks_access_log_close(struct jwks_access_log *log)
{
	uint64_t unwritten;

	if (!log)
		return;
	pthread_mutex_lock(&log->lock);
	log->stop = 1;
	pthread_cond_signal(&log->wake);
	pthread_mutex_unlock(&log->lock);
	if (!acc_wait_writer(log, ACC_CLOSE_WAIT_MS)) {
		/* Stuck on a pipe no one reads: stop trying. */
		atomic_store(&log->abandon, 1);
		if (!acc_wait_writer(log, ACC_ABANDON_WAIT_MS)) {
			/* Inside the kernel: leave it, and its memory. */
			pthread_detach(log->writer);
			acc_report_drops(log);
			acc_say("jwksd: access log: the writer is blocked in "
				"a write; lines still queued are lost\n");
			return;
		}
	}
	pthread_join(log->writer, NULL);

	acc_report_drops(log);
	unwritten = log->accepted - atomic_load(&log->written) -
		    atomic_load(&log->lost);
	if (unwritten)
		acc_say("jwksd: access log: %" PRIu64 " lines not written "
			"(nothing read the log)\n",
			unwritten);
	pthread_mutex_destroy(&log->lock);
	pthread_cond_destroy(&log->exited);
	pthread_cond_destroy(&log->wake);
	acc_free(log);
}
