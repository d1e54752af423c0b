/*
 * `jwksd users`: see users_cmd.h and the README. Generated passwords are
 * printed once, on stdout, and never stored or logged in the clear.
 */
#define _DEFAULT_SOURCE /* explicit_bzero */

#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "accounts.h"
#include "cli.h"
#include "password.h"
#include "users_cmd.h"

static const char users_usage_text[] =
	"usage: jwksd users list [--json]\n"
	"       jwksd users add NAME [--email EMAIL]\n"
	"       jwksd users passwd NAME\n"
	"       jwksd users lock NAME\n"
	"       jwksd users unlock NAME\n"
	"       jwksd users delete NAME\n"
	"\n"
	"Every command takes the store options of the server: --backend NAME,\n"
	"--db PATH, --pg-schema NAME, --lmdb-map-size BYTES; add and passwd\n"
	"also --argon2 m=KIB,t=N,p=N. add and passwd print a generated\n"
	"password once.\n";

struct users_cfg {
	const char *backend, *db, *pg_schema, *email;
	long long map_size;
	int json;
	struct pw_params argon2;
	struct ks_store *store;
	char shown[512];
};

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static int
users_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "jwksd: users: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fputs(users_usage_text, stderr);
	return 2;
}

static int users_parse(int argc, char **argv, struct users_cfg *c)
{
	static const struct option opts[] = {
		{"backend", required_argument, NULL, 'b'},
		{"db", required_argument, NULL, 'd'},
		{"pg-schema", required_argument, NULL, 'P'},
		{"lmdb-map-size", required_argument, NULL, 'm'},
		{"email", required_argument, NULL, 'e'},
		{"argon2", required_argument, NULL, 'G'},
		{"json", no_argument, NULL, 'j'},
		{NULL, 0, NULL, 0},
	};
	char why[160];
	int opt;

	opterr = 0;
	optind = 2; /* after "users SUBCOMMAND" */
	while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (opt) {
		case 'b':
			c->backend = optarg;
			break;
		case 'd':
			c->db = optarg;
			break;
		case 'P':
			if (!ks_valid_schema_name(optarg))
				return users_usage("invalid --pg-schema '%s'",
						   optarg);
			c->pg_schema = optarg;
			break;
		case 'm':
			if (cli_parse_size(optarg, 1LL << 16, 1LL << 40,
					   &c->map_size))
				return users_usage(
					"invalid --lmdb-map-size '%s'", optarg);
			break;
		case 'e':
			if (!jwks_accounts_valid_email(optarg))
				return users_usage("invalid --email");
			c->email = optarg;
			break;
		case 'G':
			if (pw_params_parse(&c->argon2, optarg, why,
					    sizeof(why)))
				return users_usage("invalid --argon2: %s", why);
			break;
		case 'j':
			c->json = 1;
			break;
		default:
			return users_usage("bad option '%s'", argv[optind - 1]);
		}
	}
	return 0;
}

/* A time as "2026-12-02 12:00:00", or "-" for none. */
static const char *users_time(int64_t t, char *buf, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (t == KS_NEVER || t == INT64_MIN || !gmtime_r(&tt, &tm) ||
	    !strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(buf, n, "-");
	return buf;
}

struct users_list_ctx {
	int json;
	json_t *arr;
};

static int users_list_one(const struct ks_user *u, void *arg)
{
	struct users_list_ctx *ctx = arg;
	char reg[32], last[32];
	json_t *o;

	users_time(u->registered, reg, sizeof(reg));
	users_time(u->last_login, last, sizeof(last));
	if (!ctx->json) {
		printf("%-6" PRId64 " %-24s %-28s %-19s %-19s %s\n", u->id,
		       u->username, u->email ? u->email : "-", reg, last,
		       u->locked ? "yes" : "no");
		return 0;
	}
	o = json_pack(
		"{sIssss?sIsIsb}", "id", (json_int_t)u->id, "username",
		u->username, "email", u->email, "registered",
		(json_int_t)u->registered, "last_login",
		(json_int_t)(u->last_login == KS_NEVER ? 0 : u->last_login),
		"locked", u->locked);
	return !o || json_array_append_new(ctx->arr, o) ? KS_ENOMEM : 0;
}

static int users_list(struct users_cfg *c)
{
	struct users_list_ctx ctx = {c->json, json_array()};
	struct ks_err e = {{0}};
	int rc;

	if (!ctx.arr)
		return 1;
	if (!c->json)
		printf("%-6s %-24s %-28s %-19s %-19s %s\n", "ID", "USERNAME",
		       "EMAIL", "REGISTERED", "LAST LOGIN", "LOCKED");
	rc = ks_user_list(c->store, users_list_one, &ctx, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot list users in '%s': %s (%s)\n",
			c->shown, ks_strerror(rc), e.text);
	} else if (c->json) {
		rc = json_dumpf(ctx.arr, stdout, JSON_INDENT(2)) ? 1 : 0;
		putchar('\n');
	}
	json_decref(ctx.arr);
	return rc ? 1 : 0;
}

/* A new generated password and its hash. */
static int users_new_password(const struct users_cfg *c,
			      char pw[PW_GENERATED_LEN + 1],
			      char hash[PW_HASH_MAX])
{
	if (pw_generate(pw) ||
	    pw_hash(hash, &c->argon2, pw, PW_GENERATED_LEN)) {
		fprintf(stderr, "jwksd: cannot make a password\n");
		return 1;
	}
	return 0;
}

static int users_add(struct users_cfg *c, const char *name)
{
	char pw[PW_GENERATED_LEN + 1], hash[PW_HASH_MAX];
	struct ks_err e = {{0}};
	int64_t id = 0;
	int rc;

	if (!jwks_accounts_valid_username(name))
		return users_usage("invalid username: 1 to 64 bytes of UTF-8 "
				   "without control characters");
	if (users_new_password(c, pw, hash))
		return 1;
	rc = ks_user_add(c->store, name, hash, c->email, (int64_t)time(NULL),
			 &id, &e);
	if (rc)
		fprintf(stderr, "jwksd: cannot add user '%s': %s (%s)\n", name,
			ks_strerror(rc), e.text);
	else
		printf("user %" PRId64 " '%s' added; password (shown once): "
		       "%s\n",
		       id, name, pw);
	explicit_bzero(pw, sizeof(pw));
	explicit_bzero(hash, sizeof(hash));
	return rc ? 1 : 0;
}

/* The user called name, or a message. */
static int users_find(struct users_cfg *c, const char *name, struct ks_user *u)
{
	struct ks_err e = {{0}};
	int rc = ks_user_get(c->store, name, u, &e);

	if (rc == KS_ENOTFOUND)
		fprintf(stderr, "jwksd: no user '%s' in '%s'\n", name,
			c->shown);
	else if (rc)
		fprintf(stderr, "jwksd: cannot read user '%s': %s (%s)\n", name,
			ks_strerror(rc), e.text);
	return rc;
}

static int users_change(struct users_cfg *c, const char *cmd, const char *name)
{
	char pw[PW_GENERATED_LEN + 1], hash[PW_HASH_MAX];
	struct ks_err e = {{0}};
	struct ks_user u = {0};
	int rc;

	if (users_find(c, name, &u))
		return 1;
	if (!strcmp(cmd, "passwd")) {
		rc = users_new_password(c, pw, hash);
		if (rc)
			goto out;
		rc = ks_user_set_hash(c->store, u.id, hash, &e);
		if (!rc)
			printf("user '%s': new password (shown once): %s\n",
			       name, pw);
		explicit_bzero(pw, sizeof(pw));
		explicit_bzero(hash, sizeof(hash));
	} else if (!strcmp(cmd, "delete")) {
		rc = ks_user_delete(c->store, u.id, &e);
		if (!rc)
			printf("user '%s' deleted\n", name);
	} else {
		rc = ks_user_set_locked(c->store, u.id, !strcmp(cmd, "lock"),
					&e);
		if (!rc)
			printf("user '%s' %sed\n", name, cmd);
	}
	if (rc)
		fprintf(stderr, "jwksd: cannot %s user '%s': %s (%s)\n", cmd,
			name, ks_strerror(rc), e.text);
out:
	ks_user_release(&u);
	return rc ? 1 : 0;
}

int users_cmd_main(int argc, char **argv)
{
	static const char *const named[] = {"add",    "passwd", "lock",
					    "unlock", "delete", NULL};
	struct users_cfg c = {.argon2 = PW_PARAMS_INIT};
	const char *cmd = argc > 1 ? argv[1] : "";
	const struct ks_backend *be;
	const char *path;
	int rc, needs_name = 0, i;

	if (!strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		fputs(users_usage_text, stdout);
		return 0;
	}
	for (i = 0; named[i]; i++)
		needs_name |= !strcmp(cmd, named[i]);
	if (!needs_name && strcmp(cmd, "list"))
		return users_usage("unknown command '%s'", cmd);
	rc = users_parse(argc, argv, &c);
	if (rc)
		return rc;
	if (needs_name && optind != argc - 1)
		return users_usage("%s needs one NAME", cmd);
	if (!needs_name && optind != argc)
		return users_usage("unexpected argument '%s'", argv[optind]);
	if (c.email && strcmp(cmd, "add"))
		return users_usage("--email is for add");
	be = cli_find_backend(c.backend);
	if (!be)
		return 2;
	path = c.db ? c.db : ks_backend_default_path(be);
	ks_describe(be, path, c.shown, sizeof(c.shown));
	if (cli_open_store(&c.store, be, path, 1, c.map_size, c.pg_schema))
		return 1;
	if (!strcmp(cmd, "list"))
		rc = users_list(&c);
	else if (!strcmp(cmd, "add"))
		rc = users_add(&c, argv[optind]);
	else
		rc = users_change(&c, cmd, argv[optind]);
	ks_close(c.store);
	return rc;
}
