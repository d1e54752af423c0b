/*
 * TLS for the listeners: loading and checking a certificate and its key,
 * the protocol policy on CivetWeb's SSL_CTX, and the per-handshake
 * certificate callback that makes a reload take effect. include/tls.h
 * describes the contract.
 */
#include "crypto_internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tls.h"

/* The largest certificate or key file read: far more than any chain. */
#define JWKS_TLS_FILE_MAX (1024 * 1024)

/* The compatibility objects for CivetWeb (crypto/tls_compat.c). */
#ifndef JWKS_TLS_COMPAT_DIR
#define JWKS_TLS_COMPAT_DIR "/usr/local/lib/jwksd"
#endif
#define JWKS_TLS_COMPAT_CRYPTO "libjwksd-compat-crypto.so"
#define JWKS_TLS_COMPAT_SSL "libjwksd-compat-ssl.so"

/* The weakest key accepted, in bits of security (RSA 2048, P-256). */
#define JWKS_TLS_MIN_SECURITY_BITS 112

/* A certificate, its chain and its key: immutable once loaded. */
struct jwks_tls_pair {
	X509 *cert;
	STACK_OF(X509) * chain;
	EVP_PKEY *key;
};

struct jwks_tls {
	char *cert_path;
	char *key_path;
	/* Guards pair: held while a handshake takes references to it. */
	pthread_mutex_t lock;
	struct jwks_tls_pair *pair;
};

static void jwks_tls_pair_free(struct jwks_tls_pair *pair)
{
	if (!pair)
		return;
	X509_free(pair->cert);
	sk_X509_pop_free(pair->chain, X509_free);
	EVP_PKEY_free(pair->key);
	free(pair);
}

/* Refuse every passphrase: keys are read unencrypted only. */
static int jwks_tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

/* The certificate and the chain after it, from the PEM in text. */
static int jwks_tls_parse_certs(struct jwks_tls_pair *pair, const char *text,
				size_t len, const char *path,
				struct ks_err *err)
{
	BIO *bio = BIO_new_mem_buf(text, (int)len);
	X509 *cert;
	unsigned long e;
	int rc = 0;

	if (!bio)
		return ks_err_set(err, KS_ENOMEM, "BIO_new_mem_buf");
	pair->cert = PEM_read_bio_X509(bio, NULL, jwks_tls_no_passphrase, NULL);
	if (!pair->cert) {
		ERR_clear_error();
		rc = ks_err_set(err, KS_EINVAL,
				"certificate file '%s' holds no PEM "
				"certificate",
				path);
		goto out;
	}
	pair->chain = sk_X509_new_null();
	if (!pair->chain) {
		rc = ks_err_set(err, KS_ENOMEM, "sk_X509_new_null");
		goto out;
	}
	while ((cert = PEM_read_bio_X509(bio, NULL, jwks_tls_no_passphrase,
					 NULL)) != NULL) {
		if (!sk_X509_push(pair->chain, cert)) {
			X509_free(cert);
			rc = ks_err_set(err, KS_ENOMEM, "sk_X509_push");
			goto out;
		}
	}
	/* The end of the file, or a block that is not a certificate. */
	e = ERR_peek_last_error();
	if (ERR_GET_LIB(e) != ERR_LIB_PEM ||
	    ERR_GET_REASON(e) != PEM_R_NO_START_LINE)
		rc = signer__ossl_err(err, KS_EINVAL,
				      "certificate chain in the certificate "
				      "file");
	ERR_clear_error();
out:
	BIO_free(bio);
	return rc;
}

/* The private key from the PEM in text. */
static int jwks_tls_parse_key(struct jwks_tls_pair *pair, const char *text,
			      size_t len, const char *path, struct ks_err *err)
{
	BIO *bio;

	if (strstr(text, "ENCRYPTED"))
		return ks_err_set(err, KS_EINVAL,
				  "private key file '%s' is encrypted: give "
				  "the key unencrypted, in a file of mode 0600",
				  path);
	bio = BIO_new_mem_buf(text, (int)len);
	if (!bio)
		return ks_err_set(err, KS_ENOMEM, "BIO_new_mem_buf");
	pair->key = PEM_read_bio_PrivateKey(bio, NULL, jwks_tls_no_passphrase,
					    NULL);
	BIO_free(bio);
	ERR_clear_error();
	if (!pair->key)
		return ks_err_set(err, KS_EINVAL,
				  "private key file '%s' holds no PEM private "
				  "key",
				  path);
	if (EVP_PKEY_get_security_bits(pair->key) < JWKS_TLS_MIN_SECURITY_BITS)
		return ks_err_set(err, KS_EINVAL,
				  "private key in '%s' is too weak (%d-bit "
				  "%s): use RSA 2048 or more, or ECDSA",
				  path, EVP_PKEY_get_bits(pair->key),
				  EVP_PKEY_get0_type_name(pair->key));
	return 0;
}

/* Read and check the files of tls into a new pair. */
static int jwks_tls_load(const struct jwks_tls *tls, struct jwks_tls_pair **out,
			 struct ks_err *err)
{
	struct jwks_tls_pair *pair;
	char *text = NULL;
	size_t len = 0;
	int rc;

	*out = NULL;
	pair = calloc(1, sizeof(*pair));
	if (!pair)
		return ks_err_set(err, KS_ENOMEM, "allocating a TLS pair");
	rc = crypto__read_file(tls->cert_path, "certificate file", 0,
			       JWKS_TLS_FILE_MAX, &text, &len, err);
	if (rc == 0)
		rc = jwks_tls_parse_certs(pair, text, len, tls->cert_path, err);
	OPENSSL_clear_free(text, len + 1);
	text = NULL;
	if (rc)
		goto out;
	rc = crypto__read_file(tls->key_path, "private key file", 1,
			       JWKS_TLS_FILE_MAX, &text, &len, err);
	if (rc == 0)
		rc = jwks_tls_parse_key(pair, text, len, tls->key_path, err);
	OPENSSL_clear_free(text, len + 1);
	if (rc)
		goto out;
	if (X509_check_private_key(pair->cert, pair->key) != 1) {
		ERR_clear_error();
		rc = ks_err_set(err, KS_EINVAL,
				"private key '%s' does not belong to the "
				"certificate in '%s'",
				tls->key_path, tls->cert_path);
		goto out;
	}
	*out = pair;
	pair = NULL;
out:
	jwks_tls_pair_free(pair);
	return rc;
}

int jwks_tls_new(struct jwks_tls **out, const char *cert_path,
		 const char *key_path, struct ks_err *err)
{
	struct jwks_tls *tls;
	int rc;

	if (out)
		*out = NULL;
	if (!out || !cert_path || !key_path)
		return ks_err_set(err, KS_EINVAL,
				  "jwks_tls_new: NULL argument");
	tls = calloc(1, sizeof(*tls));
	if (!tls)
		return ks_err_set(err, KS_ENOMEM, "allocating TLS settings");
	if (pthread_mutex_init(&tls->lock, NULL) != 0) {
		free(tls);
		return ks_err_set(err, KS_ENOMEM, "pthread_mutex_init");
	}
	tls->cert_path = strdup(cert_path);
	tls->key_path = strdup(key_path);
	if (!tls->cert_path || !tls->key_path) {
		rc = ks_err_set(err, KS_ENOMEM, "copying TLS file names");
		goto out;
	}
	rc = jwks_tls_load(tls, &tls->pair, err);
	if (rc)
		goto out;
	*out = tls;
	tls = NULL;
out:
	jwks_tls_free(tls);
	return rc;
}

int jwks_tls_reload(struct jwks_tls *tls, struct ks_err *err)
{
	struct jwks_tls_pair *pair, *old;
	int rc;

	if (!tls)
		return ks_err_set(err, KS_EINVAL, "jwks_tls_reload: no tls");
	rc = jwks_tls_load(tls, &pair, err);
	if (rc)
		return rc;
	pthread_mutex_lock(&tls->lock);
	old = tls->pair;
	tls->pair = pair;
	pthread_mutex_unlock(&tls->lock);
	/* Connections that use it hold references of their own. */
	jwks_tls_pair_free(old);
	return 0;
}

/*
 * A handshake begins (after the ClientHello, before the cipher is chosen):
 * give this connection the current pair. SSL_use_cert_and_key() takes
 * references of its own, so a reload may free the pair afterwards.
 */
static int jwks_tls_cert_cb(SSL *ssl, void *arg)
{
	struct jwks_tls *tls = arg;
	int ok;

	pthread_mutex_lock(&tls->lock);
	ok = SSL_use_cert_and_key(ssl, tls->pair->cert, tls->pair->key,
				  tls->pair->chain, 1);
	pthread_mutex_unlock(&tls->lock);
	return ok == 1 ? 1 : 0;
}

int jwks_tls_setup_ctx(struct jwks_tls *tls, void *ssl_ctx, struct ks_err *err)
{
	char groups[] = JWKS_TLS_GROUPS;
	SSL_CTX *ctx = ssl_ctx;

	if (!tls || !ctx)
		return ks_err_set(err, KS_EINVAL,
				  "jwks_tls_setup_ctx: NULL argument");
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
		return signer__ossl_err(err, KS_ECRYPTO,
					"setting TLS versions 1.2 to 1.3");
	/*
	 * CivetWeb sets server preference and may set version options of
	 * its own before it calls us: the client chooses among our ciphers
	 * (all of them strong), and the versions are the range above.
	 */
	SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE |
					   SSL_OP_NO_TLSv1_2 |
					   SSL_OP_NO_TLSv1_3);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION |
					 SSL_OP_NO_RENEGOTIATION |
					 SSL_OP_NO_TICKET);
	if (SSL_CTX_set_cipher_list(ctx, JWKS_TLS_CIPHERS_TLS12) != 1)
		return signer__ossl_err(err, KS_ECRYPTO,
					"SSL_CTX_set_cipher_list");
	if (SSL_CTX_set_ciphersuites(ctx, JWKS_TLS_CIPHERS_TLS13) != 1)
		return signer__ossl_err(err, KS_ECRYPTO,
					"SSL_CTX_set_ciphersuites");
	/* The macro casts its argument to char *: give it one (clang). */
	if (SSL_CTX_set1_groups_list(ctx, groups) != 1)
		return signer__ossl_err(err, KS_ECRYPTO,
					"SSL_CTX_set1_groups_list");
	/* A session id context, so that session ids may resume. */
	if (SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"jwksd",
					   5) != 1)
		return signer__ossl_err(err, KS_ECRYPTO,
					"SSL_CTX_set_session_id_context");
	SSL_CTX_set_cert_cb(ctx, jwks_tls_cert_cb, tls);
	return 0;
}

/* An ASN1_TIME as 2025-01-31T12:00:00Z into out; "?" when it cannot be. */
static void jwks_tls_time(const ASN1_TIME *t, char *out, size_t len)
{
	struct tm tm;

	if (!t || ASN1_TIME_to_tm(t, &tm) != 1 ||
	    !strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(out, len, "?");
}

void jwks_tls_describe(struct jwks_tls *tls, char *out, size_t len)
{
	char subject[256] = "?", until[32], *serial = NULL;
	const char *state = "";
	BIGNUM *bn = NULL;
	X509 *cert;

	if (!out || !len)
		return;
	if (!tls) {
		snprintf(out, len, "no certificate");
		return;
	}
	pthread_mutex_lock(&tls->lock);
	cert = tls->pair->cert;
	X509_up_ref(cert);
	pthread_mutex_unlock(&tls->lock);
	X509_NAME_oneline(X509_get_subject_name(cert), subject,
			  sizeof(subject));
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	if (bn)
		serial = BN_bn2hex(bn);
	jwks_tls_time(X509_get0_notAfter(cert), until, sizeof(until));
	if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
		state = ", EXPIRED";
	else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0)
		state = ", NOT YET VALID";
	snprintf(out, len, "subject %s, serial %s, valid until %s%s", subject,
		 serial ? serial : "?", until, state);
	OPENSSL_free(serial);
	BN_free(bn);
	X509_free(cert);
	ERR_clear_error();
}

/*
 * dlopen() the object name from the running program's directory, else
 * from JWKS_TLS_COMPAT_DIR. Returns the handle, or NULL after filling err.
 */
static void *jwks_tls_compat_open(const char *name, struct ks_err *err)
{
	char exe[PATH_MAX], path[PATH_MAX + 64], *slash;
	ssize_t n;
	void *handle;

	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		slash = strrchr(exe, '/');
		if (slash) {
			*slash = '\0';
			snprintf(path, sizeof(path), "%s/%s", exe, name);
			handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
			if (handle)
				return handle;
		}
	}
	snprintf(path, sizeof(path), "%s/%s", JWKS_TLS_COMPAT_DIR, name);
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!handle)
		ks_err_set(
			err, KS_ENOTFOUND,
			"cannot load %s, which CivetWeb needs to use OpenSSL "
			"3: %s",
			name, dlerror());
	return handle;
}

int jwks_tls_civetweb_init(struct ks_err *err)
{
	/* Never closed: CivetWeb keeps using what they resolve to. */
	static void *crypto, *ssl;

	if (!crypto)
		crypto = jwks_tls_compat_open(JWKS_TLS_COMPAT_CRYPTO, err);
	if (crypto && !ssl)
		ssl = jwks_tls_compat_open(JWKS_TLS_COMPAT_SSL, err);
	return crypto && ssl ? 0 : KS_ENOTFOUND;
}

void jwks_tls_free(struct jwks_tls *tls)
{
	if (!tls)
		return;
	jwks_tls_pair_free(tls->pair);
	pthread_mutex_destroy(&tls->lock);
	free(tls->cert_path);
	free(tls->key_path);
	free(tls);
}
