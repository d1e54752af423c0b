/*
 * `jwksd keys list|rotate|revoke|export-public|purge|rewrap`: see
 * keys_cmd.h and the README. Each command opens the store as the server
 * does and changes it with one transaction of include/keyadmin.h, so it is
 * safe while servers run on the same store; they show the change within a
 * second.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "keyadmin.h"
#include "keys_cmd.h"
#include "lifecycle.h"
#include "service.h"

static const char keys_usage_text[] =
	"usage: jwksd keys list [--json]\n"
	"       jwksd keys rotate [--alg ALG] [--rsa-bits N]\n"
	"       jwksd keys revoke KID\n"
	"       jwksd keys export-public\n"
	"       jwksd keys purge --older-than DURATION\n"
	"       jwksd keys rewrap --old-kek-file PATH --new-kek-file PATH\n"
	"       jwksd keys scrub\n"
	"\n"
	"Every command takes the store options of the server: --backend NAME,\n"
	"--db PATH, --pg-schema NAME, --kek-file PATH (or $NOT_MY_KEY),\n"
	"--lmdb-map-size BYTES;\n"
	"rotate and export-public also its key schedule: --token-ttl,\n"
	"--key-ttl, --jwks-max-age, --margin. DURATION: seconds, or a number\n"
	"with s, m, h or d. rotate --alg: the algorithm whose schedule\n"
	"rotates (RS256, PS256, ES256 or EdDSA; default RS256); --rsa-bits:\n"
	"2048, 3072 or 4096 (default 2048).\n";

struct keys_cfg {
	const char *backend, *db, *kek_file, *old_kek, *new_kek, *pg_schema;
	const char *alg;
	long long map_size, older_than, rsa_bits;
	int json, have_older_than;
	struct lc_policy policy;
	struct ks_store *store;
	struct kek *kek;
	/* The store as shown in messages (ks_describe: no password). */
	const char *path;
	char shown[512];
};

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static int
keys_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "jwksd: keys: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fputs(keys_usage_text, stderr);
	return 2;
}

/* A time as 2026-11-29T07:40:00Z, or "-" for none. */
static const char *keys_time(int64_t t, char *buf, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (t == INT64_MIN || t == INT64_MAX || !gmtime_r(&tt, &tm) ||
	    !strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, n, "-");
	return buf;
}

static int keys_parse(int argc, char **argv, struct keys_cfg *c)
{
	static const struct option opts[] = {
		{"backend", required_argument, NULL, 'b'},
		{"db", required_argument, NULL, 'd'},
		{"pg-schema", required_argument, NULL, 'P'},
		{"kek-file", required_argument, NULL, 'K'},
		{"old-kek-file", required_argument, NULL, 'o'},
		{"new-kek-file", required_argument, NULL, 'n'},
		{"lmdb-map-size", required_argument, NULL, 'm'},
		{"older-than", required_argument, NULL, 'O'},
		{"token-ttl", required_argument, NULL, 't'},
		{"key-ttl", required_argument, NULL, 'k'},
		{"jwks-max-age", required_argument, NULL, 'A'},
		{"margin", required_argument, NULL, 'M'},
		{"json", no_argument, NULL, 'j'},
		{"alg", required_argument, NULL, 'a'},
		{"rsa-bits", required_argument, NULL, 'r'},
		{NULL, 0, NULL, 0},
	};
	long long v;
	int opt;

	opterr = 0;
	optind = 2; /* after "keys SUBCOMMAND" */
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
				return keys_usage("invalid --pg-schema '%s': "
						  "want [a-z_][a-z0-9_]{0,62}",
						  optarg);
			c->pg_schema = optarg;
			break;
		case 'K':
			c->kek_file = optarg;
			break;
		case 'o':
			c->old_kek = optarg;
			break;
		case 'n':
			c->new_kek = optarg;
			break;
		case 'j':
			c->json = 1;
			break;
		case 'a':
			if (!signer_alg_supported(optarg))
				return keys_usage("unsupported --alg; use "
						  "RS256, PS256, ES256 or "
						  "EdDSA");
			c->alg = optarg;
			break;
		case 'r':
			if (cli_parse_int(optarg, 2048, 4096, &c->rsa_bits) ||
			    c->rsa_bits % 1024)
				return keys_usage("invalid --rsa-bits '%s': "
						  "2048, 3072 or 4096",
						  optarg);
			break;
		case 'm':
			if (cli_parse_size(optarg, 1LL << 16, 1LL << 40,
					   &c->map_size))
				return keys_usage(
					"invalid --lmdb-map-size '%s'", optarg);
			break;
		case 'O':
			if (cli_parse_duration(optarg, 0, CLI_MAX_TTL,
					       &c->older_than))
				return keys_usage("invalid --older-than '%s'",
						  optarg);
			c->have_older_than = 1;
			break;
		case 't':
		case 'k':
		case 'A':
		case 'M':
			if (cli_parse_duration(optarg, opt == 't' || opt == 'k',
					       CLI_MAX_TTL, &v))
				return keys_usage("invalid duration '%s'",
						  optarg);
			if (opt == 't')
				c->policy.token_ttl = v;
			else if (opt == 'k')
				c->policy.key_ttl = v;
			else if (opt == 'A')
				c->policy.jwks_max_age = v;
			else
				c->policy.margin = v;
			break;
		default:
			return keys_usage("bad option '%s'", argv[optind - 1]);
		}
	}
	return 0;
}

/*
 * Open the store, and unless rewrapping (which reads its two secrets
 * itself) the secret, and check them (migrate, need_keys: see cli.h).
 */
static int keys_open(struct keys_cfg *c, int rewrap, int migrate, int need_keys)
{
	const struct ks_backend *be = cli_find_backend(c->backend);
	const char *path;

	if (!be)
		return 2;
	path = c->db ? c->db : ks_backend_default_path(be);
	ks_describe(be, path, c->shown, sizeof(c->shown));
	c->path = c->shown;
	if ((!rewrap && cli_load_kek(c->kek_file, &c->kek)) ||
	    cli_open_store(&c->store, be, path, 1, c->map_size, c->pg_schema))
		return 1;
	if (rewrap)
		return 0;
	return cli_check_store(c->store, c->path, c->kek, migrate, need_keys);
}

struct keys_list_ctx {
	int64_t now;
	int json;
	json_t *arr;
};

static int keys_list_one(const struct ka_key_info *info, void *arg)
{
	struct keys_list_ctx *ctx = arg;
	const struct lc_key *k = &info->key;
	const char *state = lc_state_name(lc_state_at(k, ctx->now));
	char t[4][32];
	json_t *o;

	keys_time(k->has_life ? k->life.created : INT64_MIN, t[0],
		  sizeof(t[0]));
	keys_time(lc_activate_at(k), t[1], sizeof(t[1]));
	keys_time(lc_retire_at(k), t[2], sizeof(t[2]));
	keys_time(k->exp, t[3], sizeof(t[3]));
	if (!ctx->json) {
		printf("%-6" PRId64 " %-6s %-8s %-20s %-20s %-20s %-20s %s\n",
		       k->kid, info->alg ? info->alg : "?", state, t[0], t[1],
		       t[2], t[3], info->sealed ? "yes" : "no");
		return 0;
	}
	o = ka_key_json(info, ctx->now);
	if (!o || json_array_append_new(ctx->arr, o))
		return KS_ENOMEM;
	return 0;
}

static int keys_list(struct keys_cfg *c)
{
	struct keys_list_ctx ctx = {time(NULL), c->json, json_array()};
	struct ks_err e = {{0}};
	int rc;

	if (!ctx.arr)
		return 1;
	if (!c->json)
		printf("%-6s %-6s %-8s %-20s %-20s %-20s %-20s %s\n", "KID",
		       "ALG", "STATE", "CREATED", "SIGNS FROM", "SIGNS UNTIL",
		       "PUBLISHED UNTIL", "ENCRYPTED");
	rc = ka_list_keys(c->store, c->kek, keys_list_one, &ctx, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot list keys in '%s': %s (%s)\n",
			c->path, ks_strerror(rc), e.text);
	} else if (c->json) {
		rc = json_dumpf(ctx.arr, stdout, JSON_INDENT(2)) ? 1 : 0;
		putchar('\n');
	}
	json_decref(ctx.arr);
	return rc ? 1 : 0;
}

static int keys_rotate(struct keys_cfg *c)
{
	struct signer_key *key = NULL;
	struct ks_err e = {{0}};
	struct lc_plan plan = {.action = LC_NOTHING};
	char why[256], t[32];
	int64_t kid = 0, now = time(NULL);
	int rc;

	if (lc_policy_check(&c->policy, why, sizeof(why))) {
		fprintf(stderr, "jwksd: %s\n", why);
		return 2;
	}
	rc = signer_generate(&key, c->alg ? c->alg : "RS256",
			     (unsigned)c->rsa_bits, &e);
	if (!rc)
		rc = ka_rotate(c->store, c->kek, &c->policy, key, now, 1, NULL,
			       NULL, &plan, &kid, &e);
	signer_key_free(key);
	if (rc == KS_EEXISTS && plan.pending_kid > 0) {
		printf("key %" PRId64 " is already published and waiting to "
		       "sign; nothing changed\n",
		       plan.pending_kid);
		return 0;
	}
	if (rc) {
		fprintf(stderr, "jwksd: cannot rotate keys in '%s': %s (%s)\n",
			c->path, ks_strerror(rc), e.text);
		return 1;
	}
	printf("%s key %" PRId64 " published now, signs from %s",
	       c->alg ? c->alg : "RS256", kid,
	       keys_time(plan.activate_at, t, sizeof(t)));
	if (plan.extend_kid > 0)
		printf("; key %" PRId64 " signs until then", plan.extend_kid);
	putchar('\n');
	return 0;
}

static int keys_revoke(struct keys_cfg *c, const char *arg)
{
	struct ks_err e = {{0}};
	long long kid;
	int rc;

	if (cli_parse_int(arg, 1, INT64_MAX, &kid))
		return keys_usage("invalid kid '%s'", arg);
	rc = ka_revoke(c->store, kid, time(NULL), &e);
	if (rc == KS_EEXISTS) {
		printf("key %lld was revoked already\n", kid);
		return 0;
	}
	if (rc) {
		fprintf(stderr, "jwksd: cannot revoke key %lld in '%s': %s\n",
			kid, c->path,
			rc == KS_ENOTFOUND ? "no such key" : e.text);
		return 1;
	}
	fprintf(stderr,
		"jwksd: key %lld revoked: it leaves the JWKS and never "
		"signs again\n",
		kid);
	return 0;
}

static int keys_print_doc(const struct jwks_doc *doc, void *arg)
{
	(void)arg;
	fwrite(doc->body, 1, doc->body_len, stdout);
	putchar('\n');
	return 0;
}

static int keys_export(struct keys_cfg *c)
{
	struct jwks_service_options o = JWKS_SERVICE_OPTIONS_INIT;
	struct jwks_service *svc = NULL;
	struct ks_err e = {{0}};
	int rc;

	o.token_ttl = c->policy.token_ttl;
	o.key_ttl = c->policy.key_ttl;
	o.jwks_max_age = c->policy.jwks_max_age;
	o.margin = c->policy.margin;
	o.kek = c->kek;
	o.log = NULL;
	rc = jwks_service_new(&svc, c->store, &o, &e);
	if (!rc)
		rc = jwks_service_publish(svc, &e);
	if (!rc)
		rc = jwks_service_jwks(svc, keys_print_doc, NULL);
	if (rc)
		fprintf(stderr, "jwksd: cannot export keys of '%s': %s (%s)\n",
			c->path, ks_strerror(rc), e.text);
	jwks_service_free(svc);
	return rc ? 1 : 0;
}

static int keys_purge(struct keys_cfg *c)
{
	struct ks_err e = {{0}};
	size_t count = 0;
	int rc;

	if (!c->have_older_than)
		return keys_usage("purge needs --older-than DURATION");
	rc = ka_purge(c->store, (int64_t)time(NULL) - c->older_than, &count,
		      &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot purge keys in '%s': %s (%s)\n",
			c->path, ks_strerror(rc), e.text);
		return 1;
	}
	printf("purged %zu keys expired for more than %lld s\n", count,
	       c->older_than);
	if (count)
		cli_scrub(c->store, c->path, "purged");
	return 0;
}

static int keys_scrub(struct keys_cfg *c)
{
	if (cli_scrub(c->store, c->path, "replaced"))
		return 1;
	printf("no earlier copy of any key remains in '%s'\n", c->path);
	return 0;
}

static int keys_rewrap(struct keys_cfg *c)
{
	struct kek *from = NULL, *to = NULL;
	struct ks_err e = {{0}};
	size_t count = 0;
	int rc = 1;

	if (!c->old_kek || !c->new_kek)
		return keys_usage("rewrap needs --old-kek-file and "
				  "--new-kek-file");
	if (!cli_load_kek_file("--old-kek-file", c->old_kek, &from) &&
	    !cli_load_kek_file("--new-kek-file", c->new_kek, &to)) {
		rc = ka_rewrap(c->store, from, to, &count, &e);
		if (rc)
			fprintf(stderr,
				"jwksd: cannot re-encrypt keys in '%s': %s "
				"(%s); nothing changed\n",
				c->path, ks_strerror(rc), e.text);
		else
			printf("re-encrypted %zu keys; restart servers with "
			       "the new secret\n",
			       count);
		if (!rc)
			cli_scrub(c->store, c->path, "old-secret");
	}
	kek_free(from);
	kek_free(to);
	return rc ? 1 : 0;
}

int keys_cmd_main(int argc, char **argv)
{
	struct keys_cfg c = {.policy = LC_POLICY_INIT};
	const char *cmd = argc > 1 ? argv[1] : "";
	int rc, is_revoke = !strcmp(cmd, "revoke");

	if (!strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
		fputs(keys_usage_text, stdout);
		return 0;
	}
	if (strcmp(cmd, "list") && strcmp(cmd, "rotate") && !is_revoke &&
	    strcmp(cmd, "export-public") && strcmp(cmd, "purge") &&
	    strcmp(cmd, "rewrap") && strcmp(cmd, "scrub"))
		return keys_usage("unknown command '%s'", cmd);
	rc = keys_parse(argc, argv, &c);
	if (rc)
		return rc;
	if (is_revoke && optind != argc - 1)
		return keys_usage("revoke needs one KID");
	if (!is_revoke && optind != argc)
		return keys_usage("unexpected argument '%s'", argv[optind]);
	/* list, revoke and purge read no private key. */
	rc = keys_open(&c, !strcmp(cmd, "rewrap"), !strcmp(cmd, "rotate"),
		       !strcmp(cmd, "rotate") || !strcmp(cmd, "export-public"));
	if (!rc) {
		if (!strcmp(cmd, "list"))
			rc = keys_list(&c);
		else if (!strcmp(cmd, "rotate"))
			rc = keys_rotate(&c);
		else if (is_revoke)
			rc = keys_revoke(&c, argv[optind]);
		else if (!strcmp(cmd, "export-public"))
			rc = keys_export(&c);
		else if (!strcmp(cmd, "purge"))
			rc = keys_purge(&c);
		else if (!strcmp(cmd, "scrub"))
			rc = keys_scrub(&c);
		else
			rc = keys_rewrap(&c);
	}
	ks_close(c.store);
	kek_free(c.kek);
	return rc;
}
