/*
 * A store for tests only (tests/ks_fake.c): SQLite underneath, every
 * store-level operation counted, and any of them made to fail with a
 * chosen code, so that the layers above meet each store error without
 * root or a broken disk. Never linked into jwksd.
 */
#ifndef JWKS_KS_FAKE_H
#define JWKS_KS_FAKE_H

#include "keystore.h"

enum ks_fake_op {
	KS_FAKE_PUT,
	KS_FAKE_IMPORT,
	KS_FAKE_GET,
	KS_FAKE_LIST,
	KS_FAKE_VERSION,
	KS_FAKE_CHECK,
	KS_FAKE_LIFE_LIST,
	KS_FAKE_WRITE,
	KS_FAKE_USER_ADD,
	KS_FAKE_USER_GET,
	KS_FAKE_USER_LIST,
	KS_FAKE_USER_SET_HASH,
	KS_FAKE_USER_SET_LOGIN,
	KS_FAKE_AUTH_LOG_ADD,
	KS_FAKE_N
};

/*
 * The fake backend ("fake"), for ks_open(); its default path is SQLite's.
 * Call before starting threads (the table is built on the first call).
 */
const struct ks_backend *ks_fake_backend(void);

/* From now on op returns rc (0: pass through to SQLite again). */
void ks_fake_fail(enum ks_fake_op op, int rc);

/* How many times op was called, failed or not, since the start. */
unsigned long ks_fake_calls(enum ks_fake_op op);

#endif /* JWKS_KS_FAKE_H */
