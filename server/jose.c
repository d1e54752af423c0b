/*
 * JOSE encoding: see jose.h. Everything here is a pure function.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jose.h"
#include "signer.h"

/* Printable ASCII that needs no JSON escaping: for names from our tables. */
static int jose_plain_name(const char *s)
{
	if (!s || !*s)
		return 0;
	for (; *s; s++)
		if (*s < 0x21 || *s > 0x7e || *s == '"' || *s == '\\')
			return 0;
	return 1;
}

int jose_header_b64(char *out, size_t cap, size_t *len_out, const char *alg,
		    const char *typ, int64_t kid)
{
	char header[128];
	int n;

	*len_out = 0;
	if (!jose_plain_name(alg) || !jose_plain_name(typ))
		return KS_EINVAL;
	n = snprintf(header, sizeof(header),
		     "{\"alg\":\"%s\",\"typ\":\"%s\",\"kid\":\"%" PRId64 "\"}",
		     alg, typ, kid);
	if (n < 0 || (size_t)n >= sizeof(header) ||
	    B64URL_ENCODED_LEN((size_t)n) + 1 > cap)
		return KS_EINVAL;
	*len_out = b64url_encode(out, header, (size_t)n);
	return 0;
}

/* Append "name":<value> and a comma to a growing buffer; steals value. */
static int jose_append_member(char **buf, size_t *len, const char *name,
			      json_t *value)
{
	char *text, *grown;
	size_t need;

	if (!value)
		return KS_EINVAL;
	text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(value);
	if (!text)
		return KS_ENOMEM;
	need = *len + strlen(name) + strlen(text) + 5;
	grown = realloc(*buf, need);
	if (!grown) {
		free(text);
		return KS_ENOMEM;
	}
	*buf = grown;
	*len += (size_t)snprintf(grown + *len, need - *len, "\"%s\":%s,", name,
				 text);
	free(text);
	return 0;
}

int jose_fixed_claims(char **out, const char *issuer,
		      const char *const *audiences, size_t n_aud)
{
	char *buf = calloc(1, 1);
	size_t len = 0, i;
	json_t *aud;
	int rc = 0;

	*out = NULL;
	if (!buf)
		return KS_ENOMEM;
	if (issuer)
		rc = jose_append_member(&buf, &len, "iss", json_string(issuer));
	if (!rc && n_aud == 1) {
		rc = jose_append_member(&buf, &len, "aud",
					json_string(audiences[0]));
	} else if (!rc && n_aud > 1) {
		aud = json_array();
		for (i = 0; aud && i < n_aud; i++)
			if (json_array_append_new(aud,
						  json_string(audiences[i]))) {
				json_decref(aud);
				aud = NULL;
			}
		rc = jose_append_member(&buf, &len, "aud", aud);
	}
	if (rc) {
		free(buf);
		return rc;
	}
	*out = buf;
	return 0;
}

/* Whether s is non-empty and only base64url characters. */
static int jose_is_b64url(const char *s)
{
	return s && *s &&
	       strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			 "0123456789-_") == strlen(s);
}

/* Write s as a JSON string at out (capacity cap): its length, or 0. */
static size_t jose_put_string(char *out, size_t cap, const char *s)
{
	json_t *str = json_string(s);
	size_t n;

	if (!str)
		return 0;
	n = json_dumpb(str, out, cap, JSON_ENCODE_ANY);
	json_decref(str);
	return n <= cap ? n : 0;
}

int jose_claims_json(char *out, size_t cap, size_t *len_out,
		     const struct jose_claims *c)
{
	size_t pos = 0, n;
	int w;

	*len_out = 0;
	if (!jose_is_b64url(c->jti) || cap < 2)
		return KS_EINVAL;
	out[pos++] = '{';
	if (c->fixed) {
		n = strlen(c->fixed);
		if (n >= cap - pos)
			return KS_EINVAL;
		memcpy(out + pos, c->fixed, n);
		pos += n;
	}
	if (c->sub) {
		if (cap - pos < 8)
			return KS_EINVAL;
		memcpy(out + pos, "\"sub\":", 6);
		pos += 6;
		n = jose_put_string(out + pos, cap - pos, c->sub);
		if (!n || n >= cap - pos)
			return KS_EINVAL;
		pos += n;
		out[pos++] = ',';
	}
	if (c->preferred_username) {
		if (cap - pos < 24)
			return KS_EINVAL;
		memcpy(out + pos, "\"preferred_username\":", 21);
		pos += 21;
		n = jose_put_string(out + pos, cap - pos,
				    c->preferred_username);
		if (!n || n >= cap - pos)
			return KS_EINVAL;
		pos += n;
		out[pos++] = ',';
	}
	w = snprintf(out + pos, cap - pos,
		     "\"iat\":%" PRId64 ",\"nbf\":%" PRId64 ",\"exp\":%" PRId64
		     ",\"jti\":\"%s\"}",
		     c->iat, c->nbf, c->exp, c->jti);
	if (w < 0 || (size_t)w >= cap - pos)
		return KS_EINVAL;
	*len_out = pos + (size_t)w;
	return 0;
}

size_t jose_signing_input(char *out, size_t cap, const char *header_b64,
			  size_t header_len, const char *claims,
			  size_t claims_len, size_t sig_max)
{
	size_t pos;

	if (header_len + B64URL_ENCODED_LEN(claims_len) +
		    B64URL_ENCODED_LEN(sig_max) + 3 >
	    cap)
		return 0;
	memcpy(out, header_b64, header_len);
	pos = header_len;
	out[pos++] = '.';
	pos += b64url_encode(out + pos, claims, claims_len);
	return pos;
}

size_t jose_append_signature(char *out, size_t cap, size_t pos,
			     const unsigned char *sig, size_t sig_len)
{
	if (pos + B64URL_ENCODED_LEN(sig_len) + 2 > cap)
		return 0;
	out[pos++] = '.';
	return pos + b64url_encode(out + pos, sig, sig_len);
}

void jose_jti(char out[JOSE_JTI_LEN + 1],
	      const unsigned char random[JOSE_JTI_BYTES])
{
	b64url_encode(out, random, JOSE_JTI_BYTES);
}

/* The public members each key type may publish, after "kty". */
static const char *const *jose_allowed(const char *kty)
{
	static const char *const rsa[] = {"n", "e", NULL};
	static const char *const ec[] = {"crv", "x", "y", NULL};
	static const char *const okp[] = {"crv", "x", NULL};

	if (!kty)
		return NULL;
	if (!strcmp(kty, "RSA"))
		return rsa;
	if (!strcmp(kty, "EC"))
		return ec;
	if (!strcmp(kty, "OKP"))
		return okp;
	return NULL;
}

static const char *jose_member(const struct jose_member *m, size_t n,
			       const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (m[i].name && !strcmp(m[i].name, name))
			return m[i].value;
	return NULL;
}

json_t *jose_jwk(int64_t kid, const char *alg,
		 const struct jose_member *members, size_t n)
{
	const char *kty = jose_member(members, n, "kty");
	const char *const *allowed = jose_allowed(kty);
	json_t *jwk;
	char id[24];

	if (!allowed || !jose_plain_name(alg))
		return NULL;
	jwk = json_object();
	snprintf(id, sizeof(id), "%" PRId64, kid);
	if (!jwk || json_object_set_new(jwk, "kid", json_string(id)) ||
	    json_object_set_new(jwk, "kty", json_string(kty)) ||
	    json_object_set_new(jwk, "use", json_string("sig")) ||
	    json_object_set_new(jwk, "alg", json_string(alg)))
		goto fail;
	for (; *allowed; allowed++) {
		const char *v = jose_member(members, n, *allowed);

		if (!jose_is_b64url(v) && strcmp(*allowed, "crv"))
			goto fail;
		if (!v || json_object_set_new(jwk, *allowed, json_string(v)))
			goto fail;
	}
	return jwk;
fail:
	json_decref(jwk);
	return NULL;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
jose_why(char *why, size_t n, const char *fmt, ...)
{
	va_list ap;

	if (why && n) {
		va_start(ap, fmt);
		vsnprintf(why, n, fmt, ap);
		va_end(ap);
	}
	return KS_EINVAL;
}

/* Whether host (without port) is localhost or a loopback address. */
static int jose_loopback_host(const char *host, size_t len)
{
	size_t i;
	int dots = 0;

	if ((len == 9 && !strncmp(host, "localhost", 9)) ||
	    (len == 5 && !strncmp(host, "[::1]", 5)))
		return 1;
	if (len < 9 || strncmp(host, "127.", 4))
		return 0;
	for (i = 0; i < len; i++) {
		if (host[i] == '.')
			dots++;
		else if (host[i] < '0' || host[i] > '9')
			return 0;
	}
	return dots == 3;
}

int jose_issuer_check(const char *url, char *why, size_t n)
{
	const char *host, *end;
	size_t host_len, i;
	int https;

	if (!url || !*url)
		return jose_why(why, n, "empty issuer");
	if (strlen(url) > 512)
		return jose_why(why, n, "issuer longer than 512 bytes");
	for (i = 0; url[i]; i++)
		if ((unsigned char)url[i] <= 0x20 ||
		    (unsigned char)url[i] >= 0x7f || url[i] == '"' ||
		    url[i] == '\\')
			return jose_why(why, n,
					"issuer has a space, quote, "
					"backslash or non-ASCII byte");
	https = !strncmp(url, "https://", 8);
	if (!https && strncmp(url, "http://", 7))
		return jose_why(why, n, "issuer must be an https:// URL");
	if (strpbrk(url, "?#"))
		return jose_why(why, n,
				"issuer must have no query or fragment");
	host = url + (https ? 8 : 7);
	end = host + strcspn(host, "/");
	if (memchr(host, '@', (size_t)(end - host)))
		return jose_why(why, n, "issuer must have no user info");
	/* The host without its port ("[::1]:8080" keeps its brackets). */
	host_len = (size_t)(end - host);
	if (host_len && host[0] == '[') {
		const char *close = memchr(host, ']', host_len);

		host_len = close ? (size_t)(close - host) + 1 : 0;
		/* After the bracket: the end of the host, or a port. */
		if (host_len && host_len < (size_t)(end - host) &&
		    host[host_len] != ':')
			host_len = 0;
	} else {
		const char *colon = memchr(host, ':', host_len);

		if (colon)
			host_len = (size_t)(colon - host);
	}
	if (!host_len)
		return jose_why(why, n, "issuer has no host");
	if (!https && !jose_loopback_host(host, host_len))
		return jose_why(why, n,
				"issuer must be https (http only for "
				"localhost and loopback addresses)");
	return 0;
}

/* base joined with path ("/x"): one slash between them. Ownership: new. */
static json_t *jose_join(const char *base, const char *path)
{
	size_t n = strlen(base);
	char *s = malloc(n + strlen(path) + 1);
	json_t *j;

	if (!s)
		return NULL;
	if (n && base[n - 1] == '/')
		n--;
	memcpy(s, base, n);
	strcpy(s + n, path);
	j = json_string(s);
	free(s);
	return j;
}

/* A JSON array of the strings v[0..n). Ownership: new. */
static json_t *jose_strings(const char *const *v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_string(v[i]))) {
			json_decref(a);
			return NULL;
		}
	return a;
}

int jose_metadata(char **out, const char *issuer, const char *const *algs,
		  size_t n_algs)
{
	/*
	 * jwksd issues tokens only from its token endpoint: there is no
	 * authorization endpoint and no client authentication. Both
	 * documents still require response_types_supported; "token" is the
	 * registered value closest to a token handed out directly.
	 */
	static const char *const response_types[] = {"token"};
	static const char *const subject_types[] = {"public"};
	static const char *const auth_methods[] = {"none"};
	json_t *doc;
	int rc = KS_ENOMEM;

	*out = NULL;
	if (jose_issuer_check(issuer, NULL, 0) || !n_algs)
		return KS_EINVAL;
	doc = json_object();
	if (!doc || json_object_set_new(doc, "issuer", json_string(issuer)) ||
	    json_object_set_new(doc, "jwks_uri",
				jose_join(issuer, "/.well-known/jwks.json")) ||
	    json_object_set_new(doc, "token_endpoint",
				jose_join(issuer, "/auth")) ||
	    json_object_set_new(doc, "response_types_supported",
				jose_strings(response_types, 1)) ||
	    json_object_set_new(doc, "subject_types_supported",
				jose_strings(subject_types, 1)) ||
	    json_object_set_new(doc, "id_token_signing_alg_values_supported",
				jose_strings(algs, n_algs)) ||
	    json_object_set_new(doc, "token_endpoint_auth_methods_supported",
				jose_strings(auth_methods, 1)))
		goto out;
	*out = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
	rc = *out ? 0 : KS_ENOMEM;
out:
	json_decref(doc);
	return rc;
}
