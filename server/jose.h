/*
 * JOSE encoding: the bytes of JWS headers, JWT claims, JWKs and the
 * issuer's discovery metadata. Pure functions of their arguments: no store,
 * no clock, no randomness, no threads, no OpenSSL (signatures and random
 * bytes come in as arguments), so that every byte jwksd publishes can be
 * unit-tested on its own.
 *
 * RFC 7515 (JWS), RFC 7517 (JWK), RFC 7518 (JWA), RFC 7519 (JWT), RFC 8037
 * (OKP keys), RFC 9068 (access-token headers), RFC 8414 and OpenID Connect
 * Discovery 1.0 (metadata).
 *
 * INTERNAL to server/ (it speaks jansson, which only server/ includes).
 */
#ifndef JWKS_JOSE_H
#define JWKS_JOSE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "jwks_error.h"

/* The "typ" header of tokens: "JWT", or RFC 9068's "at+jwt". */
#define JOSE_TYP_JWT "JWT"
#define JOSE_TYP_AT_JWT "at+jwt"

/*
 * The protected header {"alg":alg,"typ":typ,"kid":"<kid>"}, in that order
 * (the assignment's), base64url-encoded into out (capacity cap, NUL
 * terminated); *len_out its length. alg and typ are names from a fixed
 * table, never request bytes; they must be printable ASCII without quote
 * or backslash. Returns 0 or KS_EINVAL (bad name, too small).
 */
int jose_header_b64(char *out, size_t cap, size_t *len_out, const char *alg,
		    const char *typ, int64_t kid);

/*
 * The claims an issuer adds to every token, fixed at configuration:
 * "iss" (issuer, may be NULL) and "aud" (n_aud audiences: none, a string
 * for one, an array for several). *out receives them as a JSON fragment
 * to put after the opening brace, each member followed by a comma
 * ("\"iss\":\"...\",\"aud\":\"...\",", or "" for neither); the caller
 * frees it. Values are JSON-escaped by jansson.
 * Returns 0, KS_EINVAL (a value that is not UTF-8), KS_ENOMEM.
 */
int jose_fixed_claims(char **out, const char *issuer,
		      const char *const *audiences, size_t n_aud);

/*
 * A token's claims. fixed: from jose_fixed_claims() (NULL for none).
 * sub, preferred_username: NULL for none; JSON-escaped here. jti: the
 * token id, base64url (no escaping needed; checked).
 */
struct jose_claims {
	const char *fixed;
	const char *sub;
	const char *preferred_username;
	int64_t iat;
	int64_t nbf;
	int64_t exp;
	const char *jti;
};

/*
 * The claims JSON: {fixed"sub":..,"preferred_username":..,"iat":..,
 * "nbf":..,"exp":..,"jti":".."}, into out (capacity cap, NUL terminated);
 * *len_out its length. Returns 0, KS_EINVAL (too small, a jti that is not
 * base64url, a sub that is not UTF-8), KS_ENOMEM.
 */
int jose_claims_json(char *out, size_t cap, size_t *len_out,
		     const struct jose_claims *c);

/*
 * The JWS compact serialization, built in place: jose_signing_input()
 * writes header_b64 "." b64url(claims) into out and returns its length
 * (0 when cap is too small for it and a signature of sig_max bytes);
 * jose_append_signature() then appends "." b64url(sig) at pos and returns
 * the token's length, NUL-terminated (0 when it does not fit).
 */
size_t jose_signing_input(char *out, size_t cap, const char *header_b64,
			  size_t header_len, const char *claims,
			  size_t claims_len, size_t sig_max);
size_t jose_append_signature(char *out, size_t cap, size_t pos,
			     const unsigned char *sig, size_t sig_len);

/* The token id: 16 random bytes in base64url (22 characters + NUL). */
#define JOSE_JTI_BYTES 16
#define JOSE_JTI_LEN 22
void jose_jti(char out[JOSE_JTI_LEN + 1],
	      const unsigned char random[JOSE_JTI_BYTES]);

/* One public member of a key, as the signer reports it. */
struct jose_member {
	const char *name;
	const char *value;
};

/*
 * One JWK (RFC 7517 §4): "kid" (the decimal kid, a string), "kty", "use":
 * "sig", "alg", then the public members of its key type, through an
 * allow-list: RSA "n", "e"; EC "crv", "x", "y"; OKP "crv", "x". Any other
 * member (a private one, say) is dropped, whatever the signer reports; a
 * key type other than those three, or a missing member, gives NULL.
 * Ownership: new.
 */
json_t *jose_jwk(int64_t kid, const char *alg,
		 const struct jose_member *members, size_t n);

/*
 * Whether url may be an issuer identifier: https, a host, no query, no
 * fragment, no user info, printable ASCII; http only for localhost and
 * loopback addresses (127.0.0.0/8, [::1]). On failure why (size n) says
 * what is wrong. Returns 0 or KS_EINVAL.
 */
int jose_issuer_check(const char *url, char *why, size_t n);

/*
 * The discovery metadata of issuer (checked with jose_issuer_check()),
 * one document served at both /.well-known/openid-configuration and
 * /.well-known/oauth-authorization-server (OpenID's members are
 * registered for RFC 8414 metadata too): "issuer" exactly as given,
 * "jwks_uri" and "token_endpoint" on it (one slash between), the
 * algorithms (algs, n_algs) as "id_token_signing_alg_values_supported".
 * *out is the serialized document; the caller frees it.
 * Returns 0, KS_EINVAL, KS_ENOMEM.
 */
int jose_metadata(char **out, const char *issuer, const char *const *algs,
		  size_t n_algs);

#endif /* JWKS_JOSE_H */
