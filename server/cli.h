/*
 * What the jwksd commands share: option values, the store, the secret.
 * INTERNAL to server/: main.c (the server and `copy`) and keys_cmd.c (the
 * `keys` commands). Functions that fail print one line to stderr starting
 * "jwksd: " and return the exit status to use.
 */
#ifndef JWKS_CLI_H
#define JWKS_CLI_H

#include <stdint.h>

#include "kek.h"
#include "keystore.h"

/* Longest time any of the duration options accepts: ten years. */
#define CLI_MAX_TTL (10LL * 366 * 24 * 3600)

/* The environment variable that holds the key-encryption secret. */
#define CLI_SECRET_ENV "NOT_MY_KEY"

/* A decimal integer in [min, max] and nothing else: 0, or -1. */
int cli_parse_int(const char *s, long long min, long long max, long long *out);

/* A byte count with an optional K, M or G suffix, in [min, max]. */
int cli_parse_size(const char *s, long long min, long long max, long long *out);

/* Seconds with an optional s, m, h or d suffix ("90d"), in [min, max]. */
int cli_parse_duration(const char *s, long long min, long long max,
		       long long *out);

/* The backend called name (NULL: the default), or NULL after a message. */
const struct ks_backend *cli_find_backend(const char *name);

/*
 * Open a store (path NULL: the backend's default), or say which store and
 * why not, shown with ks_describe() (never a password). threads sizes
 * LMDB's reader table; map_size 0 keeps the default; pg_schema NULL is
 * PostgreSQL's default schema. Returns 0 or 1.
 */
int cli_open_store(struct ks_store **out, const struct ks_backend *be,
		   const char *path, long long threads, long long map_size,
		   const char *pg_schema);

/*
 * The key-encryption key configured: from the file kek_file when it is not
 * NULL, else from $NOT_MY_KEY when set and not empty, else none (*out
 * NULL). Both at once is refused, so that it is always clear which secret
 * is used. Returns 0, or 1 after a message.
 */
int cli_load_kek(const char *kek_file, struct kek **out);

/* A kek from a file named by an option, for `keys rewrap`: 0, or 1. */
int cli_load_kek_file(const char *option, const char *path, struct kek **out);

/*
 * Check a store against the configured secret before anything uses it,
 * failing closed: encrypted keys and no secret, or keys sealed under
 * another secret, exit 1 with the store unchanged. With migrate, plaintext
 * keys found while a secret is set are encrypted in place, in one
 * transaction, and the count is logged; without a secret a warning says
 * keys are stored unencrypted. need_keys 0 (a command that reads no
 * private key) lets a store with encrypted keys be used without a secret.
 * Returns 0 or 1.
 */
int cli_check_store(struct ks_store *store, const char *path,
		    const struct kek *kek, int migrate, int need_keys);

/*
 * ks_scrub() after keys were re-encrypted in place, so that no earlier copy
 * stays in the store's files; on failure a warning says what may remain
 * and how to finish. Returns 0, or 1 when it could not be done.
 */
int cli_scrub(struct ks_store *store, const char *path, const char *what);

#endif /* JWKS_CLI_H */
