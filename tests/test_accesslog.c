/*
 * The access log (server/accesslog.c): the line format and its escaping
 * (every line parses as JSON with jansson, hostile bytes included), query
 * names without values, truncation, a full ring that drops and counts,
 * reopen after a rename, stderr, and a close that returns while the
 * writer is stuck on a FIFO nobody reads.
 */
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "accesslog.h"
#include "jwks_error.h"
#include "test.h"
#include "test_fs.h"

/* 2026-12-02T14:03:05.123456Z */
#define TEST_TIME_US (1796220185LL * 1000000 + 123456)

static char tmpdir[TEST_PATH_MAX];

static struct jwks_access_entry entry(const char *path, const char *query)
{
	struct jwks_access_entry e = {
		.time_us = TEST_TIME_US,
		.client = "127.0.0.1",
		.method = "POST",
		.path = path,
		.query = query,
		.status = 200,
		.bytes = 812,
		.duration_us = 153,
		.kid = 7,
	};

	return e;
}

/* Format e; returns the line as a NUL-terminated string (static). */
static const char *format(const struct jwks_access_entry *e, size_t *len)
{
	static char buf[JWKS_ACCESS_LINE_MAX + 1];
	size_t n = jwks_access_log__format(buf, e);

	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

/*
 * line parsed strictly (valid UTF-8, one object, no trailing bytes but
 * the newline), or NULL after a failure is recorded.
 */
static json_t *parse_line(const char *line, size_t len)
{
	json_error_t jerr;
	json_t *obj;

	CHECK(len > 0 && line[len - 1] == '\n', "line ends in a newline");
	CHECK(memchr(line, '\n', len - 1) == NULL, "one newline only: %.*s",
	      (int)len, line);
	CHECK(len <= JWKS_ACCESS_LINE_MAX, "line fits a slot: %zu", len);
	obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	CHECK(obj && json_is_object(obj), "line is a JSON object: %s: %.*s",
	      jerr.text, (int)len, line);
	return obj;
}

static const char *str_member(json_t *obj, const char *key)
{
	return json_string_value(json_object_get(obj, key));
}

static void test_example_line(void)
{
	struct jwks_access_entry e = entry("/auth", "expired");
	const char *line = format(&e, NULL);

	CHECK(!strcmp(line, "{\"time\":\"2026-12-02T14:03:05.123456Z\","
			    "\"client\":\"127.0.0.1\",\"method\":\"POST\","
			    "\"path\":\"/auth\",\"query\":[\"expired\"],"
			    "\"status\":200,\"bytes\":812,\"duration_us\":153,"
			    "\"kid\":\"7\"}\n"),
	      "the documented example, byte for byte: %s", line);

	e.query = NULL;
	e.kid = 0;
	e.method = "GET";
	e.path = "/.well-known/jwks.json";
	e.status = 304;
	e.bytes = 0;
	line = format(&e, NULL);
	CHECK(!strcmp(line,
		      "{\"time\":\"2026-12-02T14:03:05.123456Z\","
		      "\"client\":\"127.0.0.1\",\"method\":\"GET\","
		      "\"path\":\"/.well-known/jwks.json\","
		      "\"status\":304,\"bytes\":0,\"duration_us\":153}\n"),
	      "no query, no kid: both omitted: %s", line);

	e.query = "";
	CHECK(!strstr(format(&e, NULL), "query"), "empty query omitted");
	e.query = "&&";
	CHECK(!strstr(format(&e, NULL), "query"), "query of no names omitted");

	e.time_us = 0;
	CHECK(strstr(format(&e, NULL),
		     "\"time\":\"1970-01-01T00:00:00.000000Z\""),
	      "epoch: %s", format(&e, NULL));
	e.kid = INT64_MAX;
	CHECK(strstr(format(&e, NULL), "\"kid\":\"9223372036854775807\""),
	      "largest kid as a string");
}

struct hostile {
	const char *raw;
	const char *decoded; /* what a JSON parser reads back */
};

static void test_hostile_paths(void)
{
	static const struct hostile cases[] = {
		{"/a\"b", "/a\"b"},
		{"/a\\b\\\"", "/a\\b\\\""},
		{"/nl\ncr\rtab\tbell\a", "/nl\ncr\rtab\tbell\a"},
		{"/\x01\x1f\x7f", "/\x01\x1f\x7f"},
		{"/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x94\x91",
		 "/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x94\x91"},
		/* Bytes outside UTF-8 come back as U+00XX. */
		{"/\xff", "/\xc3\xbf"},
		{"/\xc0\x80", "/\xc3\x80\xc2\x80"},		/* overlong */
		{"/\x80x", "/\xc2\x80x"},			/* lone tail */
		{"/\xe2\x82", "/\xc3\xa2\xc2\x82"},		/* cut short */
		{"/\xed\xa0\x80", "/\xc3\xad\xc2\xa0\xc2\x80"}, /* surrogate */
		{"/\xf4\x90\x80\x80",
		 "/\xc3\xb4\xc2\x90\xc2\x80\xc2\x80"}, /* over U+10FFFF */
		{"/\xe9t\xe9", "/\xc3\xa9t\xc3\xa9"},  /* Latin-1 */
		{"/}\"],\"status\":1,\"x\":[\"",
		 "/}\"],\"status\":1,\"x\":[\""},
	};
	size_t i, len;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct jwks_access_entry e = entry(cases[i].raw, NULL);
		const char *line = format(&e, &len);
		const unsigned char *u = (const unsigned char *)line;
		size_t j;
		json_t *obj;

		for (j = 0; j < len - 1; j++)
			CHECK(u[j] >= 0x20 && u[j] != 0x7f,
			      "case %zu: no control byte in the line", i);
		obj = parse_line(line, len);
		if (!obj)
			continue;
		CHECK(str_member(obj, "path") &&
			      !strcmp(str_member(obj, "path"),
				      cases[i].decoded),
		      "case %zu: path reads back: %s", i, line);
		CHECK_EQ_INT(json_integer_value(json_object_get(obj, "status")),
			     200, "case %zu: status not forged", i);
		CHECK_EQ_INT(json_object_size(obj), 8,
			     "case %zu: no member added", i);
		json_decref(obj);
	}

	/* The other strings are escaped the same way. */
	{
		struct jwks_access_entry e = entry("/", "n\"a\\me\x01=v");
		json_t *obj;

		e.client = "1.2.3.4\"\n";
		e.method = "GE\xffT";
		format(&e, &len);
		obj = parse_line(format(&e, NULL), len);
		if (obj) {
			CHECK(!strcmp(str_member(obj, "client"), "1.2.3.4\"\n"),
			      "client escaped");
			CHECK(!strcmp(str_member(obj, "method"), "GE\xc3\xbfT"),
			      "method escaped");
			CHECK(!strcmp(json_string_value(json_array_get(
					      json_object_get(obj, "query"),
					      0)),
				      "n\"a\\me\x01"),
			      "query name escaped");
			json_decref(obj);
		}
	}
}

static void test_query_names(void)
{
	struct jwks_access_entry e =
		entry("/auth", "expired=true&alg=ES256&flag&&=anon&"
			       "password=hunter2&x=a%3Db&Secret%20Name=s3");
	size_t len;
	const char *line = format(&e, &len);
	json_t *obj = parse_line(line, len), *q;
	static const char *want[] = {"expired",	 "alg", "flag",		"",
				     "password", "x",	"Secret%20Name"};
	size_t i;

	CHECK(!strstr(line, "true") && !strstr(line, "ES256") &&
		      !strstr(line, "hunter2") && !strstr(line, "anon") &&
		      !strstr(line, "a%3Db") && !strstr(line, "s3"),
	      "no query value in the line: %s", line);
	if (!obj)
		return;
	q = json_object_get(obj, "query");
	CHECK(json_is_array(q), "query is an array");
	CHECK_EQ_INT(json_array_size(q), sizeof(want) / sizeof(want[0]),
		     "one name per parameter, empty parts skipped: %s", line);
	for (i = 0; i < json_array_size(q) && i < sizeof(want) / sizeof(*want);
	     i++)
		CHECK(!strcmp(json_string_value(json_array_get(q, i)), want[i]),
		      "name %zu is %s: %s", i, want[i], line);
	json_decref(obj);
}

/* A string of n copies of unit. */
static char *repeat(const char *unit, size_t n)
{
	size_t ul = strlen(unit), i;
	char *s = malloc(ul * n + 1);

	if (!s)
		abort();
	for (i = 0; i < n; i++)
		memcpy(s + i * ul, unit, ul);
	s[ul * n] = '\0';
	return s;
}

static void test_truncation(void)
{
	static const char *units[] = {
		"a", "\"", "\x01", "\xe2\x82\xac", "\xff", "\xf0\x9f\x94\x91"};
	size_t i, len;

	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		char *path = repeat(units[i], 5000);
		char *query = repeat("namenamename=valuevalue&", 200);
		char *longname = repeat(units[i], 500);
		struct jwks_access_entry e = entry(path, query);
		const char *line = format(&e, &len);
		json_t *obj = parse_line(line, len), *q;
		const char *p;

		if (obj) {
			p = str_member(obj, "path");
			CHECK(p && strlen(p) > 3 &&
				      !strcmp(p + strlen(p) - 3, "..."),
			      "unit %zu: cut path ends in ...", i);
			CHECK(p && strlen(p) > 80,
			      "unit %zu: the path's start is kept", i);
			q = json_object_get(obj, "query");
			CHECK(json_array_size(q) > 2, "unit %zu: some names",
			      i);
			CHECK(!strcmp(json_string_value(json_array_get(
					      q, json_array_size(q) - 1)),
				      "..."),
			      "unit %zu: a cut query list ends with ...", i);
			CHECK(!strcmp(json_string_value(json_array_get(q, 0)),
				      "namenamename"),
			      "unit %zu: first name whole", i);
			CHECK_EQ_INT(json_integer_value(
					     json_object_get(obj, "status")),
				     200, "unit %zu: the numbers survive", i);
			CHECK(!strcmp(str_member(obj, "kid"), "7"),
			      "unit %zu: kid survives", i);
			json_decref(obj);
		}

		/* One very long query name. */
		e.path = "/";
		e.query = longname;
		line = format(&e, &len);
		obj = parse_line(line, len);
		if (obj) {
			p = json_string_value(json_array_get(
				json_object_get(obj, "query"), 0));
			CHECK(p && strlen(p) > 3 &&
				      !strcmp(p + strlen(p) - 3, "..."),
			      "unit %zu: cut name ends in ...", i);
			json_decref(obj);
		}
		free(longname);
		free(query);
		free(path);
	}

	/* Exactly at the bound: not cut. */
	{
		char *path = repeat("b", 512);
		struct jwks_access_entry e = entry(path, NULL);
		json_t *obj;

		format(&e, &len);
		obj = parse_line(format(&e, NULL), len);
		CHECK(obj && !strcmp(str_member(obj, "path"), path),
		      "a 512-byte path is whole");
		json_decref(obj);
		free(path);
	}
}

/* ------------------------------------------------------------- files */

static char *read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0, got;

	if (!f)
		return NULL;
	do {
		if (n + 4096 > cap) {
			cap = (cap + 4096) * 2;
			buf = realloc(buf, cap + 1);
			if (!buf)
				abort();
		}
		got = fread(buf + n, 1, cap - n, f);
		n += got;
	} while (got);
	fclose(f);
	if (!buf)
		buf = calloc(1, 1);
	buf[n] = '\0';
	*len = n;
	return buf;
}

/* Lines in a file, each checked to parse; -1 if unreadable. */
static long count_lines(const char *path, const char *want_path_prefix)
{
	size_t len, start = 0, i;
	char *buf = read_all(path, &len);
	long lines = 0;

	if (!buf)
		return -1;
	for (i = 0; i < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (want_path_prefix) {
			json_t *obj = parse_line(buf + start, i + 1 - start);
			const char *p = obj ? str_member(obj, "path") : NULL;

			CHECK(p && !strncmp(p, want_path_prefix,
					    strlen(want_path_prefix)),
			      "line %ld of %s is ours", lines, path);
			json_decref(obj);
		}
		lines++;
		start = i + 1;
	}
	CHECK(start == len, "%s ends with a whole line", path);
	free(buf);
	return lines;
}

/* Wait (up to 20 s: a hang guard, not a speed target) for n lines. */
static long wait_lines(const char *path, long n)
{
	const struct timespec pause = {0, 10 * 1000000L};
	long got = -1;
	int i;

	for (i = 0; i < 2000; i++) {
		got = count_lines(path, NULL);
		if (got >= n)
			break;
		nanosleep(&pause, NULL);
	}
	return got;
}

static void write_n(struct jwks_access_log *log, const char *prefix, int n)
{
	char path[64];
	int i;

	for (i = 0; i < n; i++) {
		struct jwks_access_entry e = entry(path, "q=1");

		snprintf(path, sizeof(path), "%s%d", prefix, i);
		jwks_access_log_write(log, &e);
	}
}

static void test_open_errors(void)
{
	struct jwks_access_log *log = (struct jwks_access_log *)&log;
	char why[256] = "", path[TEST_PATH_MAX];

	join(path, sizeof(path), tmpdir, "missing/dir/access.log");
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 0, why, sizeof(why)),
		     KS_EIO, "a path in a missing directory fails at open");
	CHECK(log == NULL, "*out cleared");
	CHECK(strstr(why, path) && strstr(why, "No such file"),
	      "why names the path and the reason: %s", why);
	CHECK_EQ_INT(jwks_access_log_open(&log, tmpdir, 0, why, sizeof(why)),
		     KS_EIO, "a directory fails at open");
	CHECK_EQ_INT(jwks_access_log_open(&log, "", 0, NULL, 0), KS_EINVAL,
		     "empty path");
	join(path, sizeof(path), tmpdir, "q.log");
	CHECK_EQ_INT(jwks_access_log_open(&log, path,
					  JWKS_ACCESS_LOG_QUEUE_MAX + 1, NULL,
					  0),
		     KS_EINVAL, "queue too large");
	jwks_access_log_close(NULL);
}

static void test_flush_on_close(void)
{
	struct jwks_access_log *log = NULL;
	char path[TEST_PATH_MAX];
	struct stat st;

	join(path, sizeof(path), tmpdir, "flush.log");
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 1024, NULL, 0), 0,
		     "open");
	CHECK(stat(path, &st) == 0, "a regular file is created at open");
	CHECK_EQ_INT(st.st_mode & 0777, 0640, "mode 0640 (umask 022)");
	write_n(log, "/flush/", 700);
	CHECK_EQ_INT(jwks_access_log_dropped(log), 0, "nothing dropped");
	jwks_access_log_close(log);
	CHECK_EQ_INT(count_lines(path, "/flush/"), 700,
		     "every queued line written by close");

	/* Appends to what is there. */
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 0, NULL, 0), 0,
		     "open again");
	write_n(log, "/flush/", 5);
	jwks_access_log_close(log);
	CHECK_EQ_INT(count_lines(path, "/flush/"), 705, "appended");
}

static void test_reopen_after_rename(void)
{
	struct jwks_access_log *log = NULL;
	char path[TEST_PATH_MAX], old[TEST_PATH_MAX];
	const struct timespec pause = {0, 10 * 1000000L};
	struct stat st;
	int i;

	join(path, sizeof(path), tmpdir, "rotate.log");
	join(old, sizeof(old), tmpdir, "rotate.log.1");
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 0, NULL, 0), 0, "open");
	write_n(log, "/before/", 30);
	CHECK_EQ_INT(wait_lines(path, 30), 30, "lines written before");
	CHECK(rename(path, old) == 0, "rename");
	jwks_access_log_reopen(log);
	for (i = 0; i < 2000 && stat(path, &st) != 0; i++)
		nanosleep(&pause, NULL);
	CHECK(stat(path, &st) == 0, "the writer created the new file");
	CHECK_EQ_INT(st.st_mode & 0777, 0640, "new file mode 0640");
	write_n(log, "/after/", 20);
	jwks_access_log_close(log);
	CHECK_EQ_INT(count_lines(old, "/before/"), 30,
		     "the renamed file has the lines from before");
	CHECK_EQ_INT(count_lines(path, "/after/"), 20,
		     "the new file has the lines from after");

	/* A reopen that fails keeps the old file. */
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 0, NULL, 0), 0, "open");
	CHECK(unlink(path) == 0 && mkdir(path, 0700) == 0,
	      "the path becomes a directory");
	jwks_access_log_reopen(log);
	write_n(log, "/kept/", 3);
	jwks_access_log_close(log);
	CHECK(rmdir(path) == 0, "rmdir");
}

/* A FIFO in the test directory (no reader). */
static void make_fifo(char *path, size_t size, const char *name)
{
	join(path, size, tmpdir, name);
	CHECK(mkfifo(path, 0600) == 0, "mkfifo %s", path);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_full_queue_and_stuck_fifo(void)
{
	struct jwks_access_log *log = NULL;
	char path[TEST_PATH_MAX];
	char junk[4096];
	double t0;
	int rfd, wfd;

	/* Nobody opens the reading end: the writer is stuck in open(). */
	make_fifo(path, sizeof(path), "noreader.fifo");
	t0 = now_s();
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 8, NULL, 0), 0,
		     "a FIFO without a reader opens (in the writer)");
	write_n(log, "/fifo/", 30);
	CHECK_EQ_INT(jwks_access_log_dropped(log), 22,
		     "8 queued, the 22 beyond dropped and counted");
	jwks_access_log_close(log);
	/* A hang guard, not a speed target: close waits ~1 s, then cancels. */
	CHECK(now_s() - t0 < 20, "close returns with the writer stuck");

	/* A reader that never reads: the writer is stuck in write(). */
	make_fifo(path, sizeof(path), "slowreader.fifo");
	rfd = open(path, O_RDONLY | O_NONBLOCK);
	CHECK(rfd >= 0, "reader end");
	/* Fill the pipe first, so that the writer's first write() blocks. */
	wfd = open(path, O_WRONLY | O_NONBLOCK);
	CHECK(wfd >= 0, "a writing end of our own");
	memset(junk, '\n', sizeof(junk));
	while (write(wfd, junk, sizeof(junk)) > 0)
		;
	close(wfd);
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 64, NULL, 0), 0,
		     "open with a reader");
	/* The writer blocks in write(); the ring fills. */
	write_n(log, "/fifo/", 3000);
	CHECK(jwks_access_log_dropped(log) > 0, "drops once the pipe is full");
	t0 = now_s();
	jwks_access_log_close(log);
	CHECK(now_s() - t0 < 20, "close returns with the writer in write()");
	close(rfd);
}

static void test_stderr(void)
{
	struct jwks_access_log *log = NULL;
	char path[TEST_PATH_MAX];
	int saved, fd;

	join(path, sizeof(path), tmpdir, "stderr.txt");
	fflush(stderr);
	saved = dup(2);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(saved >= 0 && fd >= 0 && dup2(fd, 2) == 2, "stderr to a file");
	close(fd);
	CHECK_EQ_INT(jwks_access_log_open(&log, "-", 0, NULL, 0), 0, "open -");
	write_n(log, "/stderr/", 12);
	jwks_access_log_reopen(log); /* no-op */
	jwks_access_log_close(log);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	CHECK_EQ_INT(count_lines(path, "/stderr/"), 12, "lines on stderr");
	CHECK(fcntl(2, F_GETFD) >= 0, "stderr still open after close");
}

/* Writers on several threads against a small ring. */
#define TEST_THREADS 8
#define TEST_PER_THREAD 2000

static void *hammer(void *arg)
{
	write_n(arg, "/t/", TEST_PER_THREAD);
	return NULL;
}

static void test_threads(void)
{
	struct jwks_access_log *log = NULL;
	char path[TEST_PATH_MAX];
	pthread_t t[TEST_THREADS];
	uint64_t dropped;
	long lines;
	int i;

	join(path, sizeof(path), tmpdir, "threads.log");
	CHECK_EQ_INT(jwks_access_log_open(&log, path, 32, NULL, 0), 0, "open");
	for (i = 0; i < TEST_THREADS; i++)
		pthread_create(&t[i], NULL, hammer, log);
	for (i = 0; i < TEST_THREADS; i++)
		pthread_join(t[i], NULL);
	dropped = jwks_access_log_dropped(log);
	jwks_access_log_close(log);
	lines = count_lines(path, "/t/");
	CHECK_EQ_INT((uint64_t)lines + dropped, TEST_THREADS * TEST_PER_THREAD,
		     "each line written or dropped: %ld + %llu", lines,
		     (unsigned long long)dropped);
}

int main(void)
{
	char tmpl[] = "/tmp/jwks-accesslog-XXXXXX";

	/* A hang guard for the whole program. */
	alarm(120);
	umask(022);
	if (!mkdtemp(tmpl)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(tmpdir, sizeof(tmpdir), "%s", tmpl);
	test_example_line();
	test_hostile_paths();
	test_query_names();
	test_truncation();
	test_open_errors();
	test_flush_on_close();
	test_reopen_after_rename();
	test_full_queue_and_stuck_fifo();
	test_stderr();
	test_threads();
	rm_rf(tmpdir);
	return TEST_REPORT();
}
