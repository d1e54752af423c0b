/*
 * Helpers the jwksd commands share: see cli.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "keyadmin.h"

int cli_parse_int(const char *s, long long min, long long max, long long *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* A number, then at most one suffix from units (its value in mult[]). */
static int cli_parse_unit(const char *s, long long min, long long max,
			  const char *units, const long long *mult,
			  long long *out)
{
	const char *u;
	char *end;
	long long v, unit = 1;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || v < 0)
		return -1;
	if (*end && (u = strchr(units, *end)) != NULL) {
		unit = mult[u - units];
		end++;
	}
	if (*end || v > max / unit || v * unit < min)
		return -1;
	*out = v * unit;
	return 0;
}

int cli_parse_size(const char *s, long long min, long long max, long long *out)
{
	static const long long mult[] = {1LL << 10, 1LL << 10, 1LL << 20,
					 1LL << 20, 1LL << 30, 1LL << 30};

	return cli_parse_unit(s, min, max, "KkMmGg", mult, out);
}

int cli_parse_duration(const char *s, long long min, long long max,
		       long long *out)
{
	static const long long mult[] = {1, 60, 3600, 86400};

	return cli_parse_unit(s, min, max, "smhd", mult, out);
}

const struct ks_backend *cli_find_backend(const char *name)
{
	const struct ks_backend *be = ks_backend_find(name);
	size_t i;

	if (!be) {
		fprintf(stderr,
			"jwksd: unknown backend '%s'; valid backends:", name);
		for (i = 0; ks_backends[i]; i++)
			fprintf(stderr, " %s", ks_backend_name(ks_backends[i]));
		fputc('\n', stderr);
	}
	return be;
}

int cli_open_store(struct ks_store **out, const struct ks_backend *be,
		   const char *path, long long threads, long long map_size,
		   const char *pg_schema)
{
	struct ks_options kopts = KS_OPTIONS_INIT;
	struct ks_err e = {{0}};
	char shown[512];

	kopts.path = path ? path : ks_backend_default_path(be);
	kopts.max_readers = (unsigned)threads + 8;
	kopts.pg_schema = pg_schema;
	if (map_size)
		kopts.lmdb_map_size = (size_t)map_size;
	if (ks_open(out, be, &kopts, &e)) {
		ks_describe(be, kopts.path, shown, sizeof(shown));
		fprintf(stderr, "jwksd: cannot open %s store '%s': %s\n",
			ks_backend_name(be), shown, e.text);
		return 1;
	}
	return 0;
}

int cli_load_kek_file(const char *option, const char *path, struct kek **out)
{
	struct ks_err e = {{0}};

	if (kek_read_file(out, path, &e)) {
		fprintf(stderr, "jwksd: %s: %s\n", option, e.text);
		return 1;
	}
	return 0;
}

int cli_load_kek(const char *kek_file, struct kek **out)
{
	const char *env = getenv(CLI_SECRET_ENV);
	struct ks_err e = {{0}};

	*out = NULL;
	if (kek_file && env && *env) {
		fprintf(stderr, "jwksd: both --kek-file and $" CLI_SECRET_ENV
				" are set; use one\n");
		return 1;
	}
	if (kek_file)
		return cli_load_kek_file("--kek-file", kek_file, out);
	if (env && *env && kek_from_secret(out, env, strlen(env), &e)) {
		fprintf(stderr, "jwksd: $" CLI_SECRET_ENV ": %s\n", e.text);
		return 1;
	}
	return 0;
}

int cli_check_store(struct ks_store *store, const char *path,
		    const struct kek *kek, int migrate, int need_keys)
{
	struct ks_err e = {{0}};
	struct ka_scan scan = {0};
	size_t count = 0;
	int rc;

	rc = ka_scan(store, kek, &scan, &e);
	if (rc) {
		fprintf(stderr, "jwksd: cannot read keys in '%s': %s (%s)\n",
			path, ks_strerror(rc), e.text);
		return 1;
	}
	if (scan.sealed && !kek && need_keys) {
		fprintf(stderr,
			"jwksd: '%s' holds %zu encrypted keys and no "
			"key-encryption secret is set: set $" CLI_SECRET_ENV
			" or --kek-file\n",
			path, scan.sealed);
		return 1;
	}
	if (scan.foreign) {
		fprintf(stderr,
			"jwksd: %zu keys in '%s' (the first: kid %lld) are "
			"encrypted under another secret than the one given: "
			"wrong secret, nothing changed\n",
			scan.foreign, path, (long long)scan.first_foreign_kid);
		return 1;
	}
	if (scan.unopened)
		fprintf(stderr,
			"jwksd: warning: %zu encrypted keys in '%s' do not "
			"open (changed, or moved from another row); they are "
			"not used\n",
			scan.unopened, path);
	if (!kek) {
		if (migrate)
			fprintf(stderr,
				"jwksd: warning: keys in '%s' are stored "
				"unencrypted; set $" CLI_SECRET_ENV
				" or --kek-file to encrypt them\n",
				path);
		return 0;
	}
	if (!migrate || !scan.plain)
		return 0;
	rc = ka_rewrap(store, NULL, kek, &count, &e);
	if (rc) {
		fprintf(stderr,
			"jwksd: cannot encrypt the plaintext keys in '%s': %s "
			"(%s); nothing changed\n",
			path, ks_strerror(rc), e.text);
		return 1;
	}
	fprintf(stderr, "jwksd: encrypted %zu plaintext keys in '%s'\n", count,
		path);
	cli_scrub(store, path, "unencrypted");
	return 0;
}

int cli_scrub(struct ks_store *store, const char *path, const char *what)
{
	struct ks_err e = {{0}};
	int rc = ks_scrub(store, &e);

	if (!rc || rc == KS_EUNSUPPORTED)
		return 0;
	fprintf(stderr,
		"jwksd: warning: earlier %s copies of the keys may remain in "
		"the files of '%s' until overwritten (%s); run `jwksd keys "
		"scrub` while no other process uses the store\n",
		what, path, e.text);
	return 1;
}
