/*
 * Project error codes and the optional detail buffer.
 *
 * Every fallible function in jwksd returns int: 0 on success, or one of the
 * negative KS_E* codes below. The list is defined once, in KS_ERRNO_MAP, and
 * the enum, ks_strerror() and ks_err_name() are generated from it, so a code
 * and its text cannot drift apart.
 *
 * Detail text (which file, which call, the library's own words) goes into a
 * caller-supplied struct ks_err that may be NULL. There is no global error
 * state: CivetWeb runs every connection on its own thread. Detail text is for
 * logs only; it must never be sent to an HTTP client.
 */
#ifndef JWKS_ERROR_H
#define JWKS_ERROR_H

#include <stdarg.h>
#include <stdio.h>

#define KS_ERRNO_MAP(XX)                                  \
	XX(EINVAL, -1, "invalid argument")                \
	XX(ENOMEM, -2, "out of memory")                   \
	XX(EIO, -3, "input/output error")                 \
	XX(ECRYPTO, -4, "cryptographic operation failed") \
	XX(ENOTFOUND, -5, "not found")                    \
	XX(EEXISTS, -6, "already exists")                 \
	XX(ENOSPC, -7, "store is full")                   \
	XX(EBUSY, -8, "store is busy")                    \
	XX(EUNSUPPORTED, -9, "operation not supported")   \
	XX(ECORRUPT, -10, "store or record is corrupt")   \
	XX(EACCES, -11, "permission denied")              \
	XX(EBADSIG, -12, "signature does not verify")     \
	XX(ENOKEY, -13, "no usable key")                  \
	XX(EUNAVAIL, -14, "store is unreachable")

enum ks_errno {
	KS_OK = 0,
#define KS__ERR_ENUM(name, value, text) KS_##name = (value),
	KS_ERRNO_MAP(KS__ERR_ENUM)
#undef KS__ERR_ENUM
};

/*
 * The message for a code ("not found"); "unknown error" for anything else.
 * Ownership: borrowed (static storage).
 */
static inline const char *ks_strerror(int err)
{
	switch (err) {
	case KS_OK:
		return "success";
#define KS__ERR_TEXT(name, value, text) \
	case KS_##name:                 \
		return text;
		KS_ERRNO_MAP(KS__ERR_TEXT)
#undef KS__ERR_TEXT
	default:
		return "unknown error";
	}
}

/*
 * The symbolic name of a code ("KS_ENOTFOUND"); "KS_EUNKNOWN" otherwise.
 * Ownership: borrowed (static storage).
 */
static inline const char *ks_err_name(int err)
{
	switch (err) {
	case KS_OK:
		return "KS_OK";
#define KS__ERR_NAME(name, value, text) \
	case KS_##name:                 \
		return "KS_" #name;
		KS_ERRNO_MAP(KS__ERR_NAME)
#undef KS__ERR_NAME
	default:
		return "KS_EUNKNOWN";
	}
}

/*
 * Optional detail for the caller's log line. Stack-allocate it, pass its
 * address (or NULL when the detail is not wanted). A function that fails
 * fills it; one that succeeds leaves it as it was.
 */
struct ks_err {
	char text[256];
};

/*
 * Fill err (if not NULL) with printf-style detail, then return code, so that
 * a failure path can read: return ks_err_set(err, KS_EIO, "open '%s': %s", ...).
 */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline int
ks_err_set(struct ks_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(err->text, sizeof(err->text), fmt, ap);
		va_end(ap);
	}
	return code;
}

#endif /* JWKS_ERROR_H */
