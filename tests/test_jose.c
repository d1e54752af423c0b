/*
 * The JOSE encoding of server/jose.c, byte for byte, without a store, a
 * clock or threads: headers, claims, the compact serialization, JWKs and
 * their allow-list, issuer rules and discovery metadata.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "jose.h"
#include "signer.h"
#include "test.h"

/* Decode base64url text of length n into a NUL-terminated string. */
static const char *decoded(const char *text, size_t n)
{
	static char buf[2048];
	size_t len = 0;

	if (n > 2000 || b64url_decode((unsigned char *)buf, &len, text, n))
		return "<undecodable>";
	buf[len] = '\0';
	return buf;
}

static void test_header(void)
{
	char out[256];
	size_t len = 99;

	CHECK(jose_header_b64(out, sizeof(out), &len, "RS256", JOSE_TYP_JWT,
			      7) == 0,
	      "header");
	CHECK_EQ_INT(len, strlen(out), "length reported");
	CHECK(!strcmp(decoded(out, len),
		      "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"7\"}"),
	      "the assignment's header, byte for byte: %s", decoded(out, len));
	CHECK(jose_header_b64(out, sizeof(out), &len, "EdDSA", JOSE_TYP_AT_JWT,
			      9223372036854775807LL) == 0,
	      "largest kid");
	CHECK(!strcmp(decoded(out, len),
		      "{\"alg\":\"EdDSA\",\"typ\":\"at+jwt\",\"kid\":"
		      "\"9223372036854775807\"}"),
	      "at+jwt header: %s", decoded(out, len));
	CHECK_EQ_INT(jose_header_b64(out, sizeof(out), &len, "RS\"256",
				     JOSE_TYP_JWT, 1),
		     KS_EINVAL, "a quote in alg refused");
	CHECK_EQ_INT(len, 0, "length cleared on failure");
	CHECK_EQ_INT(
		jose_header_b64(out, sizeof(out), &len, "", JOSE_TYP_JWT, 1),
		KS_EINVAL, "empty alg refused");
	CHECK_EQ_INT(jose_header_b64(out, 10, &len, "RS256", JOSE_TYP_JWT, 1),
		     KS_EINVAL, "small buffer refused");
}

static void test_fixed_claims(void)
{
	const char *one[] = {"api"};
	const char *two[] = {"api", "b\"c"};
	char *f = NULL;

	CHECK(jose_fixed_claims(&f, NULL, NULL, 0) == 0 && f && !strcmp(f, ""),
	      "none: empty fragment");
	free(f);
	CHECK(jose_fixed_claims(&f, "https://id.example", one, 1) == 0 && f &&
		      !strcmp(f, "\"iss\":\"https://id.example\","
				 "\"aud\":\"api\","),
	      "one audience is a string: %s", f ? f : "(null)");
	free(f);
	CHECK(jose_fixed_claims(&f, NULL, two, 2) == 0 && f &&
		      !strcmp(f, "\"aud\":[\"api\",\"b\\\"c\"],"),
	      "several are an array, escaped: %s", f ? f : "(null)");
	free(f);
	CHECK_EQ_INT(jose_fixed_claims(&f, "https://x\xff", NULL, 0), KS_EINVAL,
		     "not UTF-8 refused");
	CHECK(f == NULL, "nothing returned on failure");
}

static void test_claims(void)
{
	struct jose_claims c = {.iat = 1700000000,
				.nbf = 1700000000,
				.exp = 1700003600,
				.jti = "AAAAAAAAAAAAAAAAAAAAAA"};
	char out[512];
	size_t len = 0;
	json_t *j;

	CHECK(jose_claims_json(out, sizeof(out), &len, &c) == 0, "claims");
	CHECK(!strcmp(out, "{\"iat\":1700000000,\"nbf\":1700000000,"
			   "\"exp\":1700003600,\"jti\":"
			   "\"AAAAAAAAAAAAAAAAAAAAAA\"}"),
	      "defaults: %s", out);
	CHECK_EQ_INT(len, strlen(out), "length");

	c.fixed = "\"iss\":\"https://id.example\",";
	c.sub = "42";
	c.preferred_username = "al\"ice\n\xc3\xa9";
	CHECK(jose_claims_json(out, sizeof(out), &len, &c) == 0, "with sub");
	j = json_loads(out, 0, NULL);
	CHECK(j != NULL, "valid JSON: %s", out);
	CHECK(j && !strcmp(json_string_value(json_object_get(j, "sub")), "42"),
	      "sub");
	CHECK(j && !strcmp(json_string_value(
				   json_object_get(j, "preferred_username")),
			   "al\"ice\n\xc3\xa9"),
	      "escaped username round-trips");
	CHECK(j && !strcmp(json_string_value(json_object_get(j, "iss")),
			   "https://id.example"),
	      "iss");
	CHECK(j && json_object_size(j) == 7, "seven members");
	json_decref(j);

	c.sub = "bad\xff";
	CHECK_EQ_INT(jose_claims_json(out, sizeof(out), &len, &c), KS_EINVAL,
		     "a sub that is not UTF-8 refused");
	c.sub = NULL;
	c.jti = "not base64url!";
	CHECK_EQ_INT(jose_claims_json(out, sizeof(out), &len, &c), KS_EINVAL,
		     "a jti outside base64url refused");
	c.jti = "AAAA";
	CHECK_EQ_INT(jose_claims_json(out, 40, &len, &c), KS_EINVAL,
		     "small buffer refused");
}

static void test_compact(void)
{
	static const unsigned char sig[3] = {0xfb, 0xff, 0x01};
	char out[128];
	size_t pos, len;

	pos = jose_signing_input(out, sizeof(out), "aGVhZA", 6, "{}", 2, 3);
	CHECK_EQ_INT(pos, 10, "header.claims");
	out[pos] = '\0';
	CHECK(!strcmp(out, "aGVhZA.e30"), "signing input: %s", out);
	len = jose_append_signature(out, sizeof(out), pos, sig, sizeof(sig));
	CHECK_EQ_INT(len, 15, "token length");
	CHECK(!strcmp(out, "aGVhZA.e30.-_8B"), "token: %s", out);
	CHECK_EQ_INT(jose_signing_input(out, 12, "aGVhZA", 6, "{}", 2, 3), 0,
		     "no room for the signature: refused up front");
	CHECK_EQ_INT(jose_append_signature(out, 12, pos, sig, sizeof(sig)), 0,
		     "signature that does not fit refused");
}

static void test_jti(void)
{
	unsigned char rnd[JOSE_JTI_BYTES];
	char a[JOSE_JTI_LEN + 1], b[JOSE_JTI_LEN + 1];

	memset(rnd, 0xff, sizeof(rnd));
	jose_jti(a, rnd);
	CHECK(!strcmp(a, "_____________________w"), "all ones: %s", a);
	CHECK_EQ_INT(strlen(a), JOSE_JTI_LEN, "22 characters");
	rnd[15] = 0xfe;
	jose_jti(b, rnd);
	CHECK(strcmp(a, b) != 0, "one bit changes it");
}

/* The member names of a JWK, in order, comma-separated. */
static const char *names(json_t *jwk)
{
	static char buf[128];
	const char *name;
	json_t *v;

	buf[0] = '\0';
	json_object_foreach(jwk, name, v)
	{
		(void)v;
		if (buf[0])
			strcat(buf, ",");
		strcat(buf, name);
	}
	return buf;
}

static void test_jwk(void)
{
	const struct jose_member rsa[] = {{"kty", "RSA"},
					  {"n", "sXch"},
					  {"e", "AQAB"},
					  {"d", "secret"},
					  {"p", "secret"}};
	const struct jose_member ec[] = {{"kty", "EC"},
					 {"crv", "P-256"},
					 {"x", "AAAA"},
					 {"y", "BBBB"},
					 {"d", "secret"}};
	const struct jose_member okp[] = {{"kty", "OKP"},
					  {"crv", "Ed25519"},
					  {"x", "AAAA"},
					  {"d", "sec"}};
	const struct jose_member oct[] = {{"kty", "oct"}, {"k", "secret"}};
	const struct jose_member no_e[] = {{"kty", "RSA"}, {"n", "sXch"}};
	const struct jose_member bad_n[] = {
		{"kty", "RSA"}, {"n", "s+ch"}, {"e", "AQAB"}};
	json_t *jwk;
	char *text;

	jwk = jose_jwk(12, "RS256", rsa, 5);
	CHECK(jwk && !strcmp(names(jwk), "kid,kty,use,alg,n,e"),
	      "RSA members allow-listed: %s", jwk ? names(jwk) : "(null)");
	text = jwk ? json_dumps(jwk, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	CHECK(text && !strcmp(text, "{\"kid\":\"12\",\"kty\":\"RSA\",\"use\":"
				    "\"sig\",\"alg\":\"RS256\",\"n\":\"sXch\","
				    "\"e\":\"AQAB\"}"),
	      "RSA JWK: %s", text ? text : "(null)");
	CHECK(text && !strstr(text, "secret"), "no private member");
	free(text);
	json_decref(jwk);

	jwk = jose_jwk(3, "ES256", ec, 5);
	CHECK(jwk && !strcmp(names(jwk), "kid,kty,use,alg,crv,x,y"),
	      "EC members: %s", jwk ? names(jwk) : "(null)");
	CHECK(jwk && !json_object_get(jwk, "d"), "EC: no d");
	json_decref(jwk);

	jwk = jose_jwk(4, "EdDSA", okp, 4);
	CHECK(jwk && !strcmp(names(jwk), "kid,kty,use,alg,crv,x"),
	      "OKP members: %s", jwk ? names(jwk) : "(null)");
	CHECK(jwk && !json_object_get(jwk, "d"), "OKP: no d");
	json_decref(jwk);

	CHECK(jose_jwk(5, "HS256", oct, 2) == NULL, "a symmetric key: none");
	CHECK(jose_jwk(5, "RS256", no_e, 2) == NULL, "a missing member: none");
	CHECK(jose_jwk(5, "RS256", bad_n, 3) == NULL,
	      "a value outside base64url: none");
	CHECK(jose_jwk(5, "RS\"256", rsa, 3) == NULL, "an odd alg: none");
}

static void test_issuer(void)
{
	static const char *const good[] = {
		"https://id.example",	  "https://id.example/",
		"https://id.example/t/1", "https://id.example:8443",
		"http://localhost:8080",  "http://127.0.0.1:9",
		"http://127.9.8.7",	  "http://[::1]:8080/x",
	};
	static const char *const bad[] = {
		"",
		"id.example",
		"ftp://id.example",
		"http://id.example",
		"http://localhost.evil.example",
		"http://127.0.0.1.evil.example",
		"http://128.0.0.1",
		"https://id.example/?a=b",
		"https://id.example#frag",
		"https://user@id.example",
		"https://",
		"https:///path",
		"https://id.example/a b",
		"https://id.example/\"",
		"HTTPS://id.example",
		"http://[::1].evil.example",
		"http://[::1]evil.example/",
		"http://[::1",
	};
	char why[160];
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK(jose_issuer_check(good[i], why, sizeof(why)) == 0,
		      "'%s' accepted: %s", good[i], why);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		CHECK(jose_issuer_check(bad[i], why, sizeof(why)) ==
				      KS_EINVAL &&
			      why[0],
		      "'%s' refused with a reason", bad[i]);
	}
}

static void test_metadata(void)
{
	const char *algs[] = {"ES256", "RS256"};
	char *doc = NULL;
	json_t *j, *a;

	CHECK(jose_metadata(&doc, "https://id.example/", algs, 2) == 0 && doc,
	      "metadata");
	j = doc ? json_loads(doc, 0, NULL) : NULL;
	CHECK(j != NULL, "valid JSON");
	CHECK(j && !strcmp(json_string_value(json_object_get(j, "issuer")),
			   "https://id.example/"),
	      "issuer exactly as given");
	CHECK(j && !strcmp(json_string_value(json_object_get(j, "jwks_uri")),
			   "https://id.example/.well-known/jwks.json"),
	      "jwks_uri: one slash");
	CHECK(j && !strcmp(json_string_value(
				   json_object_get(j, "token_endpoint")),
			   "https://id.example/auth"),
	      "token_endpoint");
	a = j ? json_object_get(j, "id_token_signing_alg_values_supported")
	      : NULL;
	CHECK(json_array_size(a) == 2 &&
		      !strcmp(json_string_value(json_array_get(a, 0)),
			      "ES256") &&
		      !strcmp(json_string_value(json_array_get(a, 1)), "RS256"),
	      "algorithms in order");
	CHECK(j &&
		      json_array_size(json_object_get(
			      j, "response_types_supported")) == 1 &&
		      json_array_size(json_object_get(
			      j, "subject_types_supported")) == 1,
	      "the required members");
	json_decref(j);
	free(doc);
	doc = NULL;
	CHECK_EQ_INT(jose_metadata(&doc, "http://example.com", algs, 2),
		     KS_EINVAL, "a bad issuer refused");
	CHECK_EQ_INT(jose_metadata(&doc, "https://id.example", algs, 0),
		     KS_EINVAL, "no algorithm refused");
	CHECK(doc == NULL, "nothing returned");
}

int main(void)
{
	test_header();
	test_fixed_claims();
	test_claims();
	test_compact();
	test_jti();
	test_jwk();
	test_issuer();
	test_metadata();
	return TEST_REPORT();
}
