/*
 * TLS for jwksd's listeners: one certificate and private key per listener,
 * checked when loaded, reloadable while connections are open, and the
 * protocol policy applied to CivetWeb's OpenSSL context.
 *
 * A struct jwks_tls holds the paths of a PEM certificate file (the server
 * certificate first, then any intermediate certificates of its chain) and
 * of a PEM private key file (unencrypted, not open to group or others, as
 * the --kek-file secret), and the pair currently loaded from them.
 *
 * The policy (jwks_tls_setup_ctx()) is Mozilla's "intermediate"
 * configuration: TLS 1.2 and 1.3 only; for TLS 1.2 only ECDHE key exchange
 * with AES-GCM or ChaCha20-Poly1305 (JWKS_TLS_CIPHERS_TLS12; no DHE, no CBC,
 * no RSA key exchange); for TLS 1.3 its three AEAD suites; the client's
 * order of preference; no compression, no renegotiation, no TLS 1.2
 * session tickets (session ids instead).
 *
 * The certificate is not set on the context: a callback of the context
 * sets the current pair on each new connection when its handshake begins.
 * So jwks_tls_reload() takes effect for every connection accepted after it
 * returns, and connections already open keep the pair they began with.
 *
 * Only crypto/ includes OpenSSL; nothing here exposes its types.
 *
 * Thread safety: jwks_tls_reload() and jwks_tls_describe() may run while
 * handshakes use the object on other threads. jwks_tls_free() must not run
 * before the last context set up with it is gone.
 */
#ifndef JWKS_TLS_H
#define JWKS_TLS_H

#include <stddef.h>

#include "jwks_error.h"

struct jwks_tls;

/* The TLS 1.2 cipher list, in OpenSSL's names (Mozilla intermediate). */
#define JWKS_TLS_CIPHERS_TLS12                                       \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* The TLS 1.3 cipher suites (OpenSSL's default, named). */
#define JWKS_TLS_CIPHERS_TLS13                           \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:" \
	"TLS_CHACHA20_POLY1305_SHA256"

/* Key exchange groups, in order of preference. */
#define JWKS_TLS_GROUPS "X25519:P-256:P-384"

/*
 * Load and check a certificate and its private key: both files are regular
 * files that parse as PEM, the key file is not open to group or others and
 * not encrypted, the key is at least as strong as 112-bit security (RSA
 * 2048) and belongs to the certificate. The paths are copied.
 * Ownership: *out is new, freed with jwks_tls_free().
 * Returns 0, KS_ENOTFOUND (a file is missing), KS_EACCES (the key file's
 * mode, or unreadable), KS_EINVAL (a file does not parse, a weak key, a key
 * of another certificate), KS_ENOMEM, KS_EIO.
 */
int jwks_tls_new(struct jwks_tls **out, const char *cert_path,
		 const char *key_path, struct ks_err *err);

/*
 * Read both files again and check them as jwks_tls_new() does. On success
 * the new pair serves every handshake that begins afterwards; on failure
 * the pair loaded before stays, unchanged. Returns the codes of
 * jwks_tls_new().
 */
int jwks_tls_reload(struct jwks_tls *tls, struct ks_err *err);

/*
 * Apply the policy above to ssl_ctx, an OpenSSL SSL_CTX * (as CivetWeb's
 * init_ssl callback hands it over), and make its handshakes use the pair
 * tls holds. tls must outlive the context. Returns 0 or KS_ECRYPTO.
 */
int jwks_tls_setup_ctx(struct jwks_tls *tls, void *ssl_ctx, struct ks_err *err);

/*
 * One line about the current certificate, for the log: its subject,
 * serial number (hex) and end of validity, and "EXPIRED" or "NOT YET
 * VALID" when it is so now. Never fails: out is always a string.
 */
void jwks_tls_describe(struct jwks_tls *tls, char *out, size_t len);

/*
 * Make CivetWeb's TLS work with OpenSSL 3: load the two compatibility
 * objects of crypto/tls_compat.c (from the directory of the running
 * program, else from JWKS_TLS_COMPAT_DIR), before mg_init_library() with
 * MG_FEATURES_TLS or the start of a listener with TLS. They stay loaded.
 * Once is enough; calling it again does nothing. Not thread-safe.
 * Returns 0 or KS_ENOTFOUND (an object is missing or does not load).
 */
int jwks_tls_civetweb_init(struct ks_err *err);

/* Free tls and the pair it holds; NULL is a no-op. */
void jwks_tls_free(struct jwks_tls *tls);

#endif /* JWKS_TLS_H */
