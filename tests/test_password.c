/*
 * Passwords (include/password.h): the parameter parser, generated UUIDv4
 * passwords, Argon2id PHC strings and their verification.
 *
 * Hashes are cross-checked against other implementations: the argon2
 * command-line tool (the reference code) makes hashes pw_verify() must
 * accept and recomputes pw_hash()'s from its salt byte for byte, and
 * tests/argon2_verify.py verifies pw_hash()'s with argon2-cffi and with
 * libsodium, whose Argon2id is an implementation of its own.
 *
 * Usage: test_password ARGON2_CLI PYTHON ARGON2_VERIFY_PY
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "password.h"
#include "signer.h"
#include "test.h"

static const char *argon2_cli;
static const char *python;
static const char *verify_py;

static const struct pw_params defaults = PW_PARAMS_INIT;

/* The reference implementation's own test vector (src/test.c). */
#define REF_HASH                                     \
	"$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ" \
	"$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"

/* The prefix pw_hash() writes with the defaults. */
#define DEFAULT_PREFIX "$argon2id$v=19$m=19456,t=2,p=1$"

/*
 * Run argv (argv[0] looked up in PATH) with in (len bytes) on its standard
 * input; its standard output, up to cap - 1 bytes without the final
 * newline, into out. Returns the exit status, or -1.
 */
static int run(const char *const argv[], const void *in, size_t len, char *out,
	       size_t cap)
{
	union {
		const char *const *c;
		char *const *v;
	} args = {.c = argv};
	char path[] = "/tmp/test_password.XXXXXX";
	int fd, pipefd[2], status;
	size_t got = 0;
	ssize_t r;
	pid_t pid;

	fd = mkstemp(path);
	if (fd < 0)
		return -1;
	unlink(path);
	if ((len && write(fd, in, len) != (ssize_t)len) ||
	    lseek(fd, 0, SEEK_SET) != 0 || pipe(pipefd) != 0) {
		close(fd);
		return -1;
	}
	pid = fork();
	if (pid == 0) {
		dup2(fd, 0);
		dup2(pipefd[1], 1);
		close(fd);
		close(pipefd[0]);
		close(pipefd[1]);
		execvp(argv[0], args.v);
		_exit(127);
	}
	close(fd);
	close(pipefd[1]);
	while (pid > 0 && (r = read(pipefd[0], out + got, cap - 1 - got)) > 0)
		got += (size_t)r;
	close(pipefd[0]);
	out[got] = '\0';
	if (got && out[got - 1] == '\n')
		out[got - 1] = '\0';
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * Hash password with the argon2 tool: Argon2id (or type "-i", "-d"),
 * version vers ("13", "10"), salt of salt_len bytes (no NUL), 32 bytes.
 * Returns 0 or -1.
 */
static int cli_hash(char out[PW_HASH_MAX], const char *type, const char *vers,
		    const struct pw_params *p, const void *salt,
		    size_t salt_len, const void *password, size_t len)
{
	char m[16], t[16], lanes[16], s[128];
	const char *argv[] = {argon2_cli, s,	type, "-v", vers,
			      "-t",	  t,	"-k", m,    "-p",
			      lanes,	  "-l", "32", "-e", NULL};

	if (salt_len >= sizeof(s) || memchr(salt, 0, salt_len))
		return -1;
	memcpy(s, salt, salt_len);
	s[salt_len] = '\0';
	snprintf(m, sizeof(m), "%u", (unsigned)p->m_kib);
	snprintf(t, sizeof(t), "%u", (unsigned)p->t);
	snprintf(lanes, sizeof(lanes), "%u", (unsigned)p->p);
	return run(argv, password, len, out, PW_HASH_MAX) == 0 ? 0 : -1;
}

/*
 * Verify hash with argon2-cffi and libsodium: 0 when both accept, 10 when
 * both refuse, anything else when they disagree or fail.
 */
static int py_verify(const char *hash, const void *password, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *pw = password;
	char *pw_hex, out[512];
	size_t i;
	int rc;

	pw_hex = malloc(2 * len + 1);
	if (!pw_hex)
		return -1;
	for (i = 0; i < len; i++) {
		pw_hex[2 * i] = hex[pw[i] >> 4];
		pw_hex[2 * i + 1] = hex[pw[i] & 15];
	}
	pw_hex[2 * len] = '\0';
	{
		const char *argv[] = {python, verify_py, hash, pw_hex, NULL};

		rc = run(argv, "", 0, out, sizeof(out));
	}
	free(pw_hex);
	return rc;
}

/* Standard unpadded base64 of the n characters at s into dst. */
static size_t t_b64_decode(unsigned char *dst, const char *s, size_t n)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm"
				       "nopqrstuvwxyz0123456789+/";
	uint32_t acc = 0;
	unsigned int bits = 0;
	size_t i, o = 0;

	for (i = 0; i < n; i++) {
		const char *c = strchr(alphabet, s[i]);

		if (!c || !s[i])
			return 0;
		acc = acc << 6 | (uint32_t)(c - alphabet);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			dst[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	return o;
}

static void test_params_parse(void)
{
	static const struct {
		const char *text;
		struct pw_params want;
	} good[] = {
		{"m=19456,t=2,p=1", {19456, 2, 1}},
		{"p=1,t=2,m=19456", {19456, 2, 1}},
		{"t=3,m=65536,p=4", {65536, 3, 4}},
		{"m=4194304,t=64,p=64", {4194304, 64, 64}},
	};
	static const char *const bad[] = {
		"",
		"m=19456",
		"m=19456,t=2",
		"t=2,p=1",
		"m=19456,t=2,p=1,p=1",
		"m=19456,m=19456,t=2,p=1",
		"m=19455,t=2,p=1",
		"m=4194305,t=2,p=1",
		"m=19456,t=1,p=1",
		"m=19456,t=65,p=1",
		"m=19456,t=2,p=0",
		"m=19456,t=2,p=65",
		"m=0x4c00,t=2,p=1",
		"m=+19456,t=2,p=1",
		"m=-19456,t=2,p=1",
		"m=019456,t=2,p=1",
		"m=19456.0,t=2,p=1",
		"m= 19456,t=2,p=1",
		" m=19456,t=2,p=1",
		"m=19456 ,t=2,p=1",
		"m=19456,t=2,p=1 ",
		"m=19456,t=2,p=1,",
		",m=19456,t=2,p=1",
		"m=19456,,t=2,p=1",
		"m=19456;t=2;p=1",
		"m=,t=2,p=1",
		"m19456,t=2,p=1",
		"M=19456,t=2,p=1",
		"m=19456,t=2,p=1,x=1",
		"m=4294967296,t=2,p=1",
		"m=99999999999999999999,t=2,p=1",
		"m=19456,t=2,p=1\n",
	};
	struct pw_params p;
	char why[128], tiny[4];
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		memset(&p, 0, sizeof(p));
		CHECK_EQ_INT(
			pw_params_parse(&p, good[i].text, why, sizeof(why)), 0,
			"'%s' is accepted", good[i].text);
		CHECK(p.m_kib == good[i].want.m_kib && p.t == good[i].want.t &&
			      p.p == good[i].want.p,
		      "'%s' gives m=%u,t=%u,p=%u", good[i].text,
		      (unsigned)p.m_kib, (unsigned)p.t, (unsigned)p.p);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		p = (struct pw_params){1, 2, 3};
		why[0] = '\0';
		CHECK_EQ_INT(pw_params_parse(&p, bad[i], why, sizeof(why)),
			     KS_EINVAL, "'%s' is refused", bad[i]);
		CHECK(why[0] != '\0', "'%s': a reason", bad[i]);
		CHECK(p.m_kib == 1 && p.t == 2 && p.p == 3,
		      "'%s': out untouched", bad[i]);
	}
	/* A reason truncated to a small buffer, or none wanted. */
	memset(tiny, 'x', sizeof(tiny));
	CHECK_EQ_INT(pw_params_parse(&p, "m=1,t=2,p=1", tiny, sizeof(tiny)),
		     KS_EINVAL, "small why buffer");
	CHECK(memchr(tiny, '\0', sizeof(tiny)) != NULL, "why is terminated");
	CHECK_EQ_INT(pw_params_parse(&p, "m=1,t=2,p=1", NULL, 0), KS_EINVAL,
		     "no why buffer");
	CHECK_EQ_INT(pw_params_parse(&p, NULL, why, sizeof(why)), KS_EINVAL,
		     "NULL text");
	CHECK_EQ_INT(pw_params_parse(NULL, "m=19456,t=2,p=1", NULL, 0),
		     KS_EINVAL, "NULL out");
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* 8-4-4-4-12 lower-case hex, version 4, variant 0b10. */
static int is_uuid_v4(const char *s)
{
	size_t i;

	if (strlen(s) != PW_GENERATED_LEN)
		return 0;
	for (i = 0; i < PW_GENERATED_LEN; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return 0;
		} else if (!strchr("0123456789abcdef", s[i]) || !s[i]) {
			return 0;
		}
	}
	return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

static void test_generate(void)
{
	enum {
		N = 10000
	};
	static const char v89ab[] = "89ab";
	char(*all)[PW_GENERATED_LEN + 1] = calloc(N, sizeof(*all));
	size_t i, bad = 0, dup = 0;
	unsigned int variants = 0;

	if (!all) {
		CHECK(0, "calloc");
		return;
	}
	for (i = 0; i < N; i++) {
		if (pw_generate(all[i]) != 0 || !is_uuid_v4(all[i]))
			bad++;
		else
			variants |= 1u << (strchr(v89ab, all[i][19]) - v89ab);
	}
	CHECK_EQ_INT(bad, 0, "every password is a v4 UUID (e.g. %s)", all[0]);
	CHECK_EQ_INT(variants, 15, "all four variant digits turn up");
	qsort(all, N, sizeof(*all), cmp_str);
	for (i = 1; i < N; i++)
		dup += strcmp(all[i - 1], all[i]) == 0;
	CHECK_EQ_INT(dup, 0, "%d distinct passwords", N);
	CHECK_EQ_INT(pw_generate(NULL), KS_EINVAL, "NULL out");
	free(all);
}

/* The salt of a PHC string, decoded into salt (64 bytes); its length. */
static size_t phc_salt(const char *hash, unsigned char salt[64])
{
	const char *end = strrchr(hash, '$'), *s = end;

	while (s && s > hash && s[-1] != '$')
		s--;
	if (!s || s == hash || end - s > 86)
		return 0;
	return t_b64_decode(salt, s, (size_t)(end - s));
}

/* The salt and hash of a PHC string pw_hash() wrote, decoded. */
static int split_hash(const char *hash, unsigned char salt[16],
		      unsigned char tag[32])
{
	const char *s = hash + strlen(DEFAULT_PREFIX), *d;

	if (strncmp(hash, DEFAULT_PREFIX, strlen(DEFAULT_PREFIX)) != 0)
		return -1;
	d = strchr(s, '$');
	if (!d || d - s != 22 || strlen(d + 1) != 43 ||
	    t_b64_decode(salt, s, 22) != 16 ||
	    t_b64_decode(tag, d + 1, 43) != 32)
		return -1;
	return 0;
}

static void test_hash_format(void)
{
	static const char pw[] = "correct horse battery staple";
	char a[PW_HASH_MAX], b[PW_HASH_MAX], c[PW_HASH_MAX];
	unsigned char salt_a[16], salt_b[16], tag[32];
	struct pw_params low = {19455, 2, 1}, high = {19456, 65, 1};
	int stale = -1;

	CHECK_EQ_INT(pw_hash(a, &defaults, pw, strlen(pw)), 0, "hash");
	CHECK_EQ_INT(pw_hash(b, &defaults, pw, strlen(pw)), 0, "hash again");
	CHECK(split_hash(a, salt_a, tag) == 0, "PHC string: %s", a);
	CHECK(split_hash(b, salt_b, tag) == 0, "PHC string: %s", b);
	CHECK(strlen(a) < PW_HASH_MAX, "fits PW_HASH_MAX");
	CHECK(memcmp(salt_a, salt_b, 16) != 0, "a new salt each time");
	CHECK(strcmp(a, b) != 0, "so a different string");

	CHECK_EQ_INT(pw_verify(a, pw, strlen(pw), &defaults, &stale), 0,
		     "verifies");
	CHECK_EQ_INT(stale, 0, "not stale");
	stale = -1;
	CHECK_EQ_INT(pw_verify(b, "wrong", 5, &defaults, &stale), KS_EBADSIG,
		     "wrong password");
	CHECK_EQ_INT(stale, 0, "stale cleared on failure");
	CHECK_EQ_INT(pw_verify(a, pw, strlen(pw), &defaults, NULL), 0,
		     "stale may be NULL");

	/* Out-of-range parameters and bad arguments. */
	strcpy(c, "x");
	CHECK_EQ_INT(pw_hash(c, &low, pw, 3), KS_EINVAL, "m below the floor");
	CHECK(c[0] == '\0', "out cleared");
	CHECK_EQ_INT(pw_hash(c, &high, pw, 3), KS_EINVAL, "t above the cap");
	CHECK_EQ_INT(pw_hash(c, NULL, pw, 3), KS_EINVAL, "NULL params");
	CHECK_EQ_INT(pw_hash(c, &defaults, NULL, 3), KS_EINVAL,
		     "NULL password with a length");
	CHECK_EQ_INT(pw_hash(NULL, &defaults, pw, 3), KS_EINVAL, "NULL out");
	CHECK_EQ_INT(pw_verify(NULL, pw, 3, &defaults, NULL), KS_EINVAL,
		     "NULL hash");
	CHECK_EQ_INT(pw_verify(a, NULL, 3, &defaults, NULL), KS_EINVAL,
		     "NULL password with a length");
	CHECK_EQ_INT(pw_verify(a, pw, 3, NULL, NULL), KS_EINVAL,
		     "NULL current");

	/* The empty password, as NULL or "". */
	CHECK_EQ_INT(pw_hash(c, &defaults, NULL, 0), 0, "empty password");
	CHECK_EQ_INT(pw_verify(c, "", 0, &defaults, NULL), 0,
		     "empty password verifies");
	CHECK_EQ_INT(pw_verify(c, "x", 1, &defaults, NULL), KS_EBADSIG,
		     "not with one byte");
}

/*
 * The argon2 tool recomputes pw_hash()'s string from its salt, and
 * argon2-cffi and libsodium accept it.
 */
static void test_hash_cross(const char *what, const struct pw_params *p,
			    const char *pw, size_t len)
{
	char ours[PW_HASH_MAX], theirs[PW_HASH_MAX];
	unsigned char salt[64];
	int tries;

	/* The tool takes the salt as an argument: one without NUL. */
	for (tries = 0; tries < 100; tries++) {
		if (pw_hash(ours, p, pw, len) != 0) {
			CHECK(0, "%s: hash", what);
			return;
		}
		if (phc_salt(ours, salt) != 16) {
			CHECK(0, "%s: salt of %s", what, ours);
			return;
		}
		if (!memchr(salt, 0, 16))
			break;
	}
	if (len < 128) {
		CHECK(cli_hash(theirs, "-id", "13", p, salt, 16, pw, len) == 0,
		      "%s: argon2 tool", what);
		CHECK(strcmp(ours, theirs) == 0,
		      "%s: the argon2 tool recomputes %s, not %s", what, ours,
		      theirs);
	}
	CHECK_EQ_INT(py_verify(ours, pw, len), 0,
		     "%s: argon2-cffi and libsodium accept %s", what, ours);
	CHECK_EQ_INT(py_verify(ours, "x", 1), 10,
		     "%s: and refuse another password", what);
}

/* Hashes the argon2 tool makes: pw_verify() accepts them. */
static void test_cli_hashes(void)
{
	static const char salt[] = "jwksd salt 16 b.";
	static const struct {
		const char *pw;
		size_t len;
	} pws[] = {
		{"pw", 2},
		{"correct horse battery staple", 28},
		{"a\0b", 3},
		{"\0\0\0\0", 4},
		{"p\xc3\xa4ss\xff", 6},
	};
	char h[PW_HASH_MAX];
	size_t i;
	int stale;

	for (i = 0; i < sizeof(pws) / sizeof(pws[0]); i++) {
		if (cli_hash(h, "-id", "13", &defaults, salt, 16, pws[i].pw,
			     pws[i].len) != 0) {
			CHECK(0, "argon2 tool, password %zu", i);
			continue;
		}
		stale = -1;
		CHECK_EQ_INT(
			pw_verify(h, pws[i].pw, pws[i].len, &defaults, &stale),
			0, "tool's hash %zu verifies: %s", i, h);
		CHECK_EQ_INT(stale, 0, "tool's hash %zu is current", i);
		CHECK_EQ_INT(pw_verify(h, pws[i].pw, pws[i].len - 1, &defaults,
				       NULL),
			     KS_EBADSIG, "tool's hash %zu, one byte short", i);
		CHECK_EQ_INT(pw_verify(h, "other", 5, &defaults, NULL),
			     KS_EBADSIG, "tool's hash %zu, another password",
			     i);
	}

	/* Current costs, but a salt of 8 bytes: rehash it to 16. */
	CHECK(cli_hash(h, "-id", "13", &defaults, "saltsalt", 8, "pw", 2) == 0,
	      "argon2 tool, 8-byte salt");
	stale = -1;
	CHECK_EQ_INT(pw_verify(h, "pw", 2, &defaults, &stale), 0,
		     "8-byte salt verifies: %s", h);
	CHECK_EQ_INT(stale, 1, "8-byte salt is stale");

	/* The reference test vector: 8-byte salt, m=65536. */
	stale = -1;
	CHECK_EQ_INT(pw_verify(REF_HASH, "password", 8, &defaults, &stale), 0,
		     "reference vector");
	CHECK_EQ_INT(stale, 1, "reference vector is stale (m, salt)");
	CHECK_EQ_INT(pw_verify(REF_HASH, "passwore", 8, &defaults, NULL),
		     KS_EBADSIG, "reference vector, wrong password");
	CHECK(cli_hash(h, "-id", "13", &(struct pw_params){65536, 2, 1},
		       "somesalt", 8, "password", 8) == 0 &&
		      strcmp(h, REF_HASH) == 0,
	      "the argon2 tool agrees with the reference vector: %s", h);
}

static void test_stale(void)
{
	static const struct pw_params t3 = {19456, 3, 1}, m2 = {38912, 2, 1},
				      p2 = {19456, 2, 2};
	char h[PW_HASH_MAX];
	int stale;

	CHECK_EQ_INT(pw_hash(h, &t3, "pw", 2), 0, "hash with t=3");
	CHECK(strncmp(h, "$argon2id$v=19$m=19456,t=3,p=1$", 31) == 0,
	      "t=3 in the string: %s", h);
	stale = -1;
	CHECK_EQ_INT(pw_verify(h, "pw", 2, &defaults, &stale), 0,
		     "t=3 verifies under t=2");
	CHECK_EQ_INT(stale, 1, "and is stale");
	stale = -1;
	CHECK_EQ_INT(pw_verify(h, "pw", 2, &t3, &stale), 0, "under t=3");
	CHECK_EQ_INT(stale, 0, "it is current");
	stale = -1;
	CHECK_EQ_INT(pw_verify(h, "pX", 2, &defaults, &stale), KS_EBADSIG,
		     "wrong password, t=3");
	CHECK_EQ_INT(stale, 0, "stale only on success");

	CHECK_EQ_INT(pw_hash(h, &m2, "pw", 2), 0, "hash with m=38912");
	stale = -1;
	CHECK_EQ_INT(pw_verify(h, "pw", 2, &defaults, &stale), 0, "m=38912");
	CHECK_EQ_INT(stale, 1, "m differs: stale");
	CHECK_EQ_INT(pw_hash(h, &p2, "pw", 2), 0, "hash with p=2");
	stale = -1;
	CHECK_EQ_INT(pw_verify(h, "pw", 2, &defaults, &stale), 0, "p=2");
	CHECK_EQ_INT(stale, 1, "p differs: stale");
	stale = -1;
	CHECK_EQ_INT(pw_verify(h, "pw", 2, &p2, &stale), 0, "p=2 current");
	CHECK_EQ_INT(stale, 0, "p=2 is current");
}

/* Replace the first occurrence of from in src by to, into dst. */
static void edit(char *dst, size_t cap, const char *src, const char *from,
		 const char *to)
{
	const char *at = strstr(src, from);

	if (!at) {
		snprintf(dst, cap, "%s", src);
		return;
	}
	snprintf(dst, cap, "%.*s%s%s", (int)(at - src), src, to,
		 at + strlen(from));
}

static void test_malformed(void)
{
	static const char salt[] = "jwksd salt 16 b.";
	char good[PW_HASH_MAX], h[2 * PW_HASH_MAX], tag[64], seg[64];
	const char *tag_at, *salt_at;
	size_t len, i;
	int stale;

	if (cli_hash(good, "-id", "13", &defaults, salt, 16, "pw", 2) != 0 ||
	    pw_verify(good, "pw", 2, &defaults, NULL) != 0) {
		CHECK(0, "a good hash to damage: %s", good);
		return;
	}
	tag_at = strrchr(good, '$') + 1;
	snprintf(tag, sizeof(tag), "%s", tag_at);
	/* The salt with its two '$'. */
	for (salt_at = tag_at - 1; salt_at[-1] != '$'; salt_at--)
		;
	snprintf(seg, sizeof(seg), "%.*s", (int)(tag_at - salt_at + 1),
		 salt_at - 1);

#define BAD(text, ...)                                                    \
	do {                                                              \
		stale = -1;                                               \
		CHECK_EQ_INT(pw_verify(text, "pw", 2, &defaults, &stale), \
			     KS_ECORRUPT, __VA_ARGS__);                   \
		CHECK_EQ_INT(stale, 0, "not stale: " __VA_ARGS__);        \
	} while (0)

	/* Other variants and versions, from the tool itself. */
	CHECK(cli_hash(h, "-i", "13", &defaults, salt, 16, "pw", 2) == 0,
	      "argon2i");
	BAD(h, "argon2i: %s", h);
	CHECK(cli_hash(h, "-d", "13", &defaults, salt, 16, "pw", 2) == 0,
	      "argon2d");
	BAD(h, "argon2d: %s", h);
	CHECK(cli_hash(h, "-id", "10", &defaults, salt, 16, "pw", 2) == 0,
	      "v=16");
	BAD(h, "v=16: %s", h);
	edit(h, sizeof(h), good, "$argon2id$", "$argon2i$");
	BAD(h, "argon2i label on an argon2id hash");
	edit(h, sizeof(h), good, "$v=19", "");
	BAD(h, "no version");
	edit(h, sizeof(h), good, "$argon2id$", "$ARGON2ID$");
	BAD(h, "upper case");

	/* Costs beyond the bounds: never run. */
	edit(h, sizeof(h), good, "m=19456", "m=999999999");
	BAD(h, "m=999999999");
	edit(h, sizeof(h), good, "m=19456", "m=4194305");
	BAD(h, "m=4194305");
	edit(h, sizeof(h), good, "m=19456", "m=4294967296");
	BAD(h, "m overflows 32 bits");
	edit(h, sizeof(h), good, "m=19456", "m=256");
	BAD(h, "m=256, below the floor");
	edit(h, sizeof(h), good, "t=2", "t=1");
	BAD(h, "t=1");
	edit(h, sizeof(h), good, "t=2", "t=4000000000");
	BAD(h, "t=4000000000");
	edit(h, sizeof(h), good, "p=1", "p=0");
	BAD(h, "p=0");
	edit(h, sizeof(h), good, "p=1", "p=65");
	BAD(h, "p=65");
	edit(h, sizeof(h), good, "m=19456", "m=019456");
	BAD(h, "leading zero");
	edit(h, sizeof(h), good, "m=19456,t=2", "t=2,m=19456");
	BAD(h, "parameters out of order");
	edit(h, sizeof(h), good, "p=1", "p=1,keyid=abc");
	BAD(h, "a keyid");
	edit(h, sizeof(h), good, "p=1", "p=1,data=abc");
	BAD(h, "associated data");
	edit(h, sizeof(h), good, "t=2,", "");
	BAD(h, "no t");

	/* Truncated anywhere. */
	len = strlen(good);
	for (i = 0; i < len; i++) {
		snprintf(h, sizeof(h), "%.*s", (int)i, good);
		stale = -1;
		if (pw_verify(h, "pw", 2, &defaults, &stale) != KS_ECORRUPT ||
		    stale != 0) {
			CHECK(0, "truncated to %zu bytes: %s", i, h);
			break;
		}
	}
	CHECK(i == len, "every truncation is refused");
	BAD("", "empty");

	/* Bad base64, padding, trailing bytes. */
	edit(h, sizeof(h), good, tag, "");
	BAD(h, "no hash");
	snprintf(h, sizeof(h), "%.*s!%s", (int)(tag_at - good + 3), good,
		 tag_at + 4);
	BAD(h, "'!' in the hash");
	snprintf(h, sizeof(h), "%.*s-%s", (int)(tag_at - good + 3), good,
		 tag_at + 4);
	BAD(h, "base64url '-' in the hash");
	snprintf(h, sizeof(h), "%s=", good);
	BAD(h, "padding");
	snprintf(h, sizeof(h), "%sAAAA", good);
	BAD(h, "hash of 35 bytes");
	snprintf(h, sizeof(h), "%s\n", good);
	BAD(h, "trailing newline");
	snprintf(h, sizeof(h), "%s$", good);
	BAD(h, "trailing '$'");
	/*
	 * The last of 43 characters carries 2 low bits that must be zero
	 * (its value a multiple of 4): set the lowest, the next character.
	 */
	snprintf(h, sizeof(h), "%s", good);
	len = strlen(h);
	CHECK(strchr("AEIMQUYcgkosw048", good[len - 1]) != NULL,
	      "libargon2 writes zero low bits");
	h[len - 1] = (char)(good[len - 1] + 1);
	BAD(h, "non-zero unused bits: %s", h);
	edit(h, sizeof(h), good, seg, "$$");
	BAD(h, "empty salt");
	edit(h, sizeof(h), good, seg, "$c2FsdDc$");
	BAD(h, "salt of 5 bytes");
	edit(h, sizeof(h), good, seg, "$c29tZXNhbA$");
	BAD(h, "salt of 7 bytes");
	edit(h, sizeof(h), good, seg, "$c29tZXNhbHQ=$");
	BAD(h, "padded salt");
#undef BAD
}

/* Passwords with NUL bytes, long ones, and the length that counts. */
static void test_bytes(void)
{
	static const char nul[] = "a\0b\0c";
	unsigned char *kib = malloc(1024);
	char h[PW_HASH_MAX];

	if (!kib || signer_random(kib, 1024) != 0) {
		CHECK(0, "1 KiB of random bytes");
		free(kib);
		return;
	}
	kib[100] = 0; /* at least one NUL inside */

	CHECK_EQ_INT(pw_hash(h, &defaults, nul, 5), 0, "hash a\\0b\\0c");
	CHECK_EQ_INT(pw_verify(h, nul, 5, &defaults, NULL), 0, "all 5 bytes");
	CHECK_EQ_INT(pw_verify(h, nul, 1, &defaults, NULL), KS_EBADSIG,
		     "not the part before the NUL");
	CHECK_EQ_INT(pw_verify(h, "a\0b\0d", 5, &defaults, NULL), KS_EBADSIG,
		     "a byte after a NUL counts");
	CHECK_EQ_INT(pw_verify(h, "a\0b\0c\0", 6, &defaults, NULL), KS_EBADSIG,
		     "a trailing NUL counts");
	test_hash_cross("a\\0b\\0c", &defaults, nul, 5);

	CHECK_EQ_INT(pw_hash(h, &defaults, "pw", 2), 0, "hash pw");
	CHECK_EQ_INT(pw_verify(h, "pw\0", 3, &defaults, NULL), KS_EBADSIG,
		     "pw\\0 is not pw");
	CHECK_EQ_INT(pw_verify(h, "pwx", 2, &defaults, NULL), 0,
		     "only len bytes are read");

	CHECK_EQ_INT(pw_hash(h, &defaults, (const char *)kib, 1024), 0,
		     "hash 1 KiB");
	CHECK_EQ_INT(pw_verify(h, (const char *)kib, 1024, &defaults, NULL), 0,
		     "1 KiB verifies");
	CHECK_EQ_INT(pw_verify(h, (const char *)kib, 1023, &defaults, NULL),
		     KS_EBADSIG, "1023 bytes do not");
	kib[1023] ^= 1;
	CHECK_EQ_INT(pw_verify(h, (const char *)kib, 1024, &defaults, NULL),
		     KS_EBADSIG, "last bit flipped");
	kib[1023] ^= 1;
	test_hash_cross("1 KiB", &defaults, (const char *)kib, 1024);
	free(kib);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr,
			"usage: %s ARGON2_CLI PYTHON ARGON2_VERIFY_PY\n",
			argv[0]);
		return 2;
	}
	argon2_cli = argv[1];
	python = argv[2];
	verify_py = argv[3];

	test_params_parse();
	test_generate();
	test_hash_format();
	test_hash_cross("default parameters", &defaults, "pw", 2);
	test_hash_cross("m=65536,t=3,p=4", &(struct pw_params){65536, 3, 4},
			"correct horse", 13);
	test_cli_hashes();
	test_stale();
	test_malformed();
	test_bytes();
	return TEST_REPORT();
}
