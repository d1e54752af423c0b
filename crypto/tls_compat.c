/*
 * The two small shared objects that let Debian's CivetWeb 1.15 load
 * OpenSSL 3 (crypto/tls.c, jwks_tls_civetweb_init(), loads them).
 *
 * CivetWeb opens OpenSSL itself at run time: dlopen("libcrypto.so") and
 * dlopen("libssl.so"), then dlsym() of every function it calls. Two things
 * fail with OpenSSL 3: those names exist only as symlinks from libssl-dev,
 * and CivetWeb asks for SSL_get_peer_certificate, which OpenSSL 3 has only
 * as a macro for SSL_get1_peer_certificate (civetweb/civetweb issue 1334).
 *
 * dlopen() of a bare name first returns an object already loaded whose
 * DT_SONAME is that name. So this file is built twice, as shared objects
 * whose DT_SONAMEs are "libcrypto.so" and "libssl.so", each depending on
 * the real libcrypto.so.3 or libssl.so.3, where dlsym() on their handles
 * finds every OpenSSL function; the libssl one adds the missing function.
 * They live in a directory of their own, never in one ldconfig scans.
 */
#include "crypto_internal.h"

#ifdef JWKS_TLS_COMPAT_SSL
#include <openssl/ssl.h>

/* Deprecated in OpenSSL 3.0: a new reference, as 1.1's function gave. */
#undef SSL_get_peer_certificate
X509 *SSL_get_peer_certificate(const SSL *s);

X509 *SSL_get_peer_certificate(const SSL *s)
{
	return SSL_get1_peer_certificate(s);
}
#else
/* Nothing but the dependency on libcrypto.so.3 and the DT_SONAME. */
extern const int jwks_tls_compat_crypto;
const int jwks_tls_compat_crypto = 1;
#endif
