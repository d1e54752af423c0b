/*
 * The signer, for every algorithm of its table (RS256, PS256, ES256,
 * EdDSA): generation and RSA sizes, the PEM blobs, loading and rejecting
 * blobs (the key type picks the algorithm; keys of other curves, sizes or
 * PSS restrictions are refused), the public JWK members and their widths,
 * signing and verifying, known answers from RFC 7515 and RFC 8037, bad
 * arguments, concurrent signing on one key, the CSPRNG, and, when
 * /usr/bin/openssl is installed, independent verification with the OpenSSL
 * command line tool against public keys built from the JWK members alone.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "signer.h"
#include "test.h"

#define PKCS1_BEGIN "-----BEGIN RSA PRIVATE KEY-----\n"
#define PKCS1_END "-----END RSA PRIVATE KEY-----\n"
#define OPENSSL_BIN "/usr/bin/openssl"

/*
 * Throwaway keys: an EC P-256 key in SEC1 form ("EC PRIVATE KEY"), which
 * loads as ES256, and keys that must be refused.
 */
static const char ec_p256_pem[] =
	"-----BEGIN EC PRIVATE KEY-----\n"
	"MHcCAQEEINF44Fw2mONzjvYVX0GeLifFY5KvrcPNqbBbPB2EoaUJoAoGCCqGSM49\n"
	"AwEHoUQDQgAEMFUV0jHiM+q0YYOBw/lZYsz71vaARbv1bQe3ywTqqa4wmbX1SCTL\n"
	"cOTLxTY5bu4Y5bA3bWSGV1JowEmKZtukbA==\n"
	"-----END EC PRIVATE KEY-----\n";

static const char rsa_1024_pem[] =
	"-----BEGIN RSA PRIVATE KEY-----\n"
	"MIICXgIBAAKBgQDLCXaMJ5XAwoWe/AmAEomETH05IcIG+7Ou2rz4k6j+v13p94v4\n"
	"A91rUT2pkIMoFEfZncNg/ctxx7SC3f46wC9TxSiJKeHhmgP/fg49/edX4RpsZ7Dz\n"
	"qjRyaWr9+gO0268R6olEuN/dAX7+3OtViH6HEC+aKxDjAaYL16d+vEmq2wIDAQAB\n"
	"AoGAROdcPOo+LyGUuUStcLJZyvUuVhI3x6jp7MA8+1sZMgL9uyYQcUXWgdIbTA1I\n"
	"BXUEgTzCDoty3JU6lGMEISoRpRByyUZ7Sep64RKGG7s/4H3Yx/nBKWAb55mF3qQo\n"
	"GHwfcuzrsyGo0aNpgi8HYTQAU8j9DDOwx/xcZqfhhylPGtkCQQDn6CzW1d7+TMzh\n"
	"dB8fmX2AL4eJ0WBoNKKYDTa7nGvBNG7ebOsVwAeNi/etE3E6/4R63Vg2ZwPQjXzg\n"
	"BXVs57I1AkEA4CF1b836DBqymfDqp1Xm1fxD2tVCsbzfE1Z6mLdSFDTrKpsT4XzS\n"
	"ZmlbvDRivRrrUUBhRzcnFVQlnz5Sh2CKzwJBALBOMsihkAaFHL3KKl87sc3iVIjS\n"
	"RRjz6yjt4s5+/OzFkARJie/fLd7Oql1Kiqrv1ygRXx788kl7R5SIkd1ZyIECQQC8\n"
	"Sj+Pcto66v7aJrPralYntOsIX5rNGJ/Lbh5GR9PTl/VscKWODD/xu1dO0C+XMJM6\n"
	"SjyvCF10JKIKmt/YTTmvAkEAvVZjppPeCkWEgr4Ls6I13byao8+k18bozmwAO47j\n"
	"/bF6CT0Z7+Cc6ePOsmWPzEDRD5FRVvQ7PHLz2arx9cZO4g==\n"
	"-----END RSA PRIVATE KEY-----\n";

/* EC on P-384 (secp384r1), PKCS#8. */
static const char ec_p384_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBRFsomTxcsTdVDGksJ\n"
	"k5UIUoK+t+LEPAfcdEMs1scLHddSjpC0WVPnWR0Q2PIXR96hZANiAAT7VIhyFwZP\n"
	"oZQJILoXZ7Ev8Wrh5Xo5smDg8itC+AZpp96Ye1YTRJRIaj6deYtENL5x6/ZHWaHQ\n"
	"0eF1o/IvKIfrDTfh5zgEKmcySoMjLZ6hmYj1dfYUGZHwxmiq1YwvJzU=\n"
	"-----END PRIVATE KEY-----\n";

/* P-256 by explicit curve parameters instead of its name, PKCS#8. */
static const char ec_p256_explicit_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIBeQIBADCCAQMGByqGSM49AgEwgfcCAQEwLAYHKoZIzj0BAQIhAP////8AAAAB\n"
	"AAAAAAAAAAAAAAAA////////////////MFsEIP////8AAAABAAAAAAAAAAAAAAAA\n"
	"///////////////8BCBaxjXYqjqT57PrvVV2mIa8ZR0GsMxTsPY7zjw+J9JgSwMV\n"
	"AMSdNgiG5wSTamZ44ROdJreBn36QBEEEaxfR8uEsQkf4vOblY6RA8ncDfYEt6zOg\n"
	"9KE5RdiYwpZP40Li/hp/m47n60p8D54WK84zV2sxXs7LtkBoN79R9QIhAP////8A\n"
	"AAAA//////////+85vqtpxeehPO5ysL8YyVRAgEBBG0wawIBAQQg4Iih4DuJCeyg\n"
	"MOfBBgsSDnVXWHybi+sslwpxP2TC2V+hRANCAAQXEFZGVTu2nQUgEU0F7ASE77W0\n"
	"yo/O+B9YJoraqOEWJiuFaHkbC8yZ9kACp7/tzMbZSntjRdYLDKxfhmiOscMG\n"
	"-----END PRIVATE KEY-----\n";

/* Ed448, PKCS#8. */
static const char ed448_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MEcCAQAwBQYDK2VxBDsEOWIwD1VNDwBWnx0PV2xP/Z27HI32jUXctTEBG1tO6S1S\n"
	"7t/cRNz9iiFIdpYo3a2QrrYghLaW9e2ZRw==\n"
	"-----END PRIVATE KEY-----\n";

/*
 * RSA-PSS of 2048 bits restricted to SHA-512, MGF1-SHA-512 and a salt of at
 * least 64 bytes, PKCS#8.
 */
static const char rsa_pss_sha512_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIE8QIBADBBBgkqhkiG9w0BAQowNKAPMA0GCWCGSAFlAwQCAwUAoRwwGgYJKoZI\n"
	"hvcNAQEIMA0GCWCGSAFlAwQCAwUAogMCAUAEggSnMIIEowIBAAKCAQEAj/2ZTUBG\n"
	"TSSYM8+HOqaAsjFpda9Y2M5euWAhrsPjeXoejyrku3RYWrDIlfd9lUCtxs9IGeNR\n"
	"OgDDFqhGjE1mZm9xQ30MTtBYXtnTqYoy+Nx1QdzQQLVLEz/v+OGhij4THSSjFJUc\n"
	"l1/95/vqw/oh4uqUZ2JNsYX8h1fZqjT2PzZRpbwxP0Q1vSmF65ETMHI0Ylr2Tv8m\n"
	"MR+9235iA+nXDkEMzBgfvAOu5r37MOiPJ3bXD3KV7aJKIkRHsaqHnw8UYZA+89UA\n"
	"ueeKMx0evpIevMMVMZMMX3hzMAU/2ihFy+Lc+z/L2T6J3m4uONk1tUJapc24mtjU\n"
	"7AkeRY/qkbI0HwIDAQABAoIBAAfBvyDwvfjI6GQeIWhQ8OzoiYhb9lrTnzm4Sog6\n"
	"KEZyhDPtOR46Ecps7JlbmEnSjqn/n6A5ZTZNNTVCwm4re0E4bq8WjPOv+Jq/fE4N\n"
	"UlqisbRnG1bpDU7PqnNLYGLsniX7Q8fHkp86/hghs490KaAqR+1b19ig4a4+1sx7\n"
	"Bur3wvNQy8SitZLmXxAYCXqTp5nFlBcnY/fh5I7TjiGtew12P0PUxgn+aGP7sHyz\n"
	"+kNbB92/cEYPUfEZt6lHY7kS9559gwZd2FMre9CCcFF+y6U7Ts5JJrn8KkGQhBjp\n"
	"6iWFspql7sQETl+sZ+wmpvGj240Zgcke8VhbVQCHcu/rkV0CgYEAxctV8yPjJdtq\n"
	"H6baSaSWGFlb6F91x8M2FZf+Nrv5TwnMby4edRjumxnoj74fAn1wXFf9opzRzIEW\n"
	"LpQc0YI/tb6N/qyz8VkHDNKYwyqNfyvsoPAv0w+c0zeboj/NKCi6P0leDgq8DRi8\n"
	"qd7gM74IvUcER8mPUXKmPxUq+tPnL8sCgYEAul0CkfiKDUN1zbU1IeSH8pm3GOd9\n"
	"QCwnxGsVXQr8aAtShOKapnwJ/dZTqdoU7VVY8cuzmS9Fc2lMf1svKCzI8D3rQ5X+\n"
	"h+1FpMmH4xHaREXBiDBsUreXvLROFgM0t4KczkCLYxlfQUdJWRgzJ5PmP97WSJCN\n"
	"92XCV7+krRO32n0CgYEArUjfHAyszFXWO7SqOSqAdQSUiJhZT5GuqGxowvscCCrF\n"
	"eAInnN8i669fF8+wyzWqYryT8QsCou/UxynrtYEu38L6E8yqOR+OFaXLP/Df1jJd\n"
	"NQI4Y+ihtEpbh2HuEujbguZ8CEFPTwoE/63LLommjmzRSzNC5FBVZZ7d8LIFMNEC\n"
	"gYB0IZeDbNRiNYKIYH4uk6FfvQgK/d3gCmPxkyUp6LmnAD84zZi/XBZB1rgl5N8b\n"
	"kg6uBljxgTKPG7PuvNyi9V11z6/2WtbUzzeR23/RMQPJfYp/GmW2Ge/1SIpMT00f\n"
	"ecXLBQ+W/m2MWSbM3TarWA+oB22SpHnDC+dSFPtCW0I7ZQKBgAKIryYBsLJDjJR0\n"
	"XkpKqKHw+gTp8IDcoPFpAMtInOsEoAuBDf0403npuktHMlX0btAyH2H5D+PLYlVB\n"
	"5WLgojWNod/Lvx2Y7SEcAMzj7fFTCNP5m1grPC0NEwXNKf8e/33OEpeVWRp/eRpF\n"
	"0YZSyHmaAX0TyQChoRQhxQ+2WKv6\n"
	"-----END PRIVATE KEY-----\n";

static const char jws_input[] = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
				"eyJzdWIiOiJ0ZXN0IiwiZXhwIjoxfQ";

/* A non-NULL pointer that no function may hand back. */
static int dummy_storage;
#define DUMMY_KEY ((struct signer_key *)(void *)&dummy_storage)

/* The public JWK members a key reports, in order. */
struct jwk {
	int count;
	int stop_at;
	char names[8][16];
	char kty[16];
	char n[B64URL_ENCODED_LEN(SIGNER_SIG_MAX) + 1];
	char e[16];
};

static int jwk_collect(const char *name, const char *value, void *arg)
{
	struct jwk *jwk = arg;

	if (jwk->count < 8)
		snprintf(jwk->names[jwk->count], sizeof(jwk->names[0]), "%s",
			 name);
	if (strcmp(name, "kty") == 0)
		snprintf(jwk->kty, sizeof(jwk->kty), "%s", value);
	else if (strcmp(name, "n") == 0)
		snprintf(jwk->n, sizeof(jwk->n), "%s", value);
	else if (strcmp(name, "e") == 0)
		snprintf(jwk->e, sizeof(jwk->e), "%s", value);
	return jwk->count++ == jwk->stop_at ? 7 : 0;
}

static int get_jwk(const struct signer_key *key, struct jwk *jwk)
{
	memset(jwk, 0, sizeof(*jwk));
	jwk->stop_at = -1;
	return signer_public_jwk(key, jwk_collect, jwk);
}

/* The modulus of key, decoded from its JWK "n", into n (256+ bytes). */
static size_t key_modulus(const struct signer_key *key, unsigned char *n)
{
	struct jwk jwk;
	size_t len = 0;

	if (get_jwk(key, &jwk) != 0 ||
	    b64url_decode(n, &len, jwk.n, strlen(jwk.n)) != 0)
		return 0;
	return len;
}

static int starts_with(const unsigned char *blob, size_t len, const char *s)
{
	return len >= strlen(s) && memcmp(blob, s, strlen(s)) == 0;
}

/*
 * Hand-built DER and PEM, for keys, public keys and signatures made
 * without the signer. Lengths up to 64 KiB, in their shortest form.
 */
#define DER_MAX 6144

static size_t der_put_len(unsigned char *p, size_t len)
{
	if (len < 0x80) {
		p[0] = (unsigned char)len;
		return 1;
	}
	if (len < 0x100) {
		p[0] = 0x81;
		p[1] = (unsigned char)len;
		return 2;
	}
	p[0] = 0x82;
	p[1] = (unsigned char)(len >> 8);
	p[2] = (unsigned char)len;
	return 3;
}

/* Tag, length and content at p (content may overlap p); the size. */
static size_t der_put(unsigned char *p, unsigned char tag, const void *content,
		      size_t len)
{
	unsigned char head[4];
	size_t n;

	head[0] = tag;
	n = 1 + der_put_len(head + 1, len);
	memmove(p + n, content, len);
	memcpy(p, head, n);
	return n + len;
}

/* The INTEGER of the unsigned big-endian number be, as DER wants it. */
static size_t der_put_uint(unsigned char *p, const unsigned char *be,
			   size_t len)
{
	unsigned char v[SIGNER_SIG_MAX + 1];
	size_t n = 0;

	while (len > 1 && be[0] == 0) {
		be++;
		len--;
	}
	if (be[0] & 0x80)
		v[n++] = 0;
	memcpy(v + n, be, len);
	return der_put(p, 0x02, v, n + len);
}

/*
 * The content of the element with tag at *p (before end), and its length;
 * *p moves past the element. NULL when there is no such element.
 */
static const unsigned char *der_get(const unsigned char **p,
				    const unsigned char *end, unsigned char tag,
				    size_t *len)
{
	const unsigned char *q = *p;
	size_t l, n;

	if (end - q < 2 || q[0] != tag)
		return NULL;
	l = q[1];
	q += 2;
	if (l & 0x80) {
		n = l & 0x7f;
		if (n == 0 || n > 2 || (size_t)(end - q) < n)
			return NULL;
		for (l = 0; n > 0; n--)
			l = l << 8 | *q++;
	}
	if ((size_t)(end - q) < l)
		return NULL;
	*len = l;
	*p = q + l;
	return q;
}

/* der as PEM with label: malloc'ed and NUL-terminated, or NULL. */
static char *pem_encode(const char *label, const unsigned char *der,
			size_t der_len)
{
	char b64[B64URL_ENCODED_LEN(DER_MAX) + 4], *out;
	size_t i, len, o;

	if (der_len > DER_MAX)
		return NULL;
	len = b64url_encode(b64, der, der_len);
	while (len % 4)
		b64[len++] = '=';
	out = malloc(len + len / 64 + 2 * strlen(label) + 64);
	if (!out)
		return NULL;
	o = (size_t)sprintf(out, "-----BEGIN %s-----\n", label);
	for (i = 0; i < len; i++) {
		out[o++] = b64[i] == '-' ? '+' : b64[i] == '_' ? '/' : b64[i];
		if (i % 64 == 63 || i == len - 1)
			out[o++] = '\n';
	}
	sprintf(out + o, "-----END %s-----\n", label);
	return out;
}

/* The body of the first PEM block into der (DER_MAX bytes). 0 or -1. */
static int pem_decode(const void *pem, size_t pem_len, unsigned char *der,
		      size_t *der_len)
{
	const char *s = pem, *end = s + pem_len;
	char b64[B64URL_ENCODED_LEN(DER_MAX) + 4];
	size_t n = 0;

	while (s < end && *s != '\n')
		s++;
	for (; s < end && *s != '-'; s++) {
		if (*s == '\n' || *s == '=')
			continue;
		if (n == sizeof(b64))
			return -1;
		b64[n++] = *s == '+' ? '-' : *s == '/' ? '_' : *s;
	}
	if (B64URL_DECODED_MAX(n) > DER_MAX)
		return -1;
	return b64url_decode(der, der_len, b64, n);
}

/*
 * AlgorithmIdentifiers: rsaEncryption, RSASSA-PSS (unrestricted), EC on
 * P-256, Ed25519.
 */
static const unsigned char alg_rsa[] = {
	0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
	0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
};
static const unsigned char alg_rsa_pss[] = {
	0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48,
	0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
};
static const unsigned char alg_p256[] = {
	0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
};
static const unsigned char alg_ed25519[] = {
	0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
};

/*
 * A PKCS#8 PEM ("BEGIN PRIVATE KEY"): a PrivateKeyInfo of version 0, the
 * algorithm alg_id, and the private key in an OCTET STRING. Malloc'ed, or
 * NULL.
 */
static char *pkcs8_pem(const unsigned char *alg_id, size_t alg_len,
		       const unsigned char *key, size_t key_len)
{
	unsigned char p8[DER_MAX];
	size_t n = 0;

	if (key_len + alg_len + 16 > DER_MAX)
		return NULL;
	p8[n++] = 0x02;
	p8[n++] = 0x01;
	p8[n++] = 0x00;
	memcpy(p8 + n, alg_id, alg_len);
	n += alg_len;
	n += der_put(p8 + n, 0x04, key, key_len);
	n = der_put(p8, 0x30, p8, n);
	return pem_encode("PRIVATE KEY", p8, n);
}

/*
 * Rewrap a PKCS#1 PEM key as PKCS#8 PEM of algorithm alg_id: alg_rsa or
 * alg_rsa_pss. Malloc'ed, or NULL.
 */
static char *pkcs1_to_pkcs8(const unsigned char *pem, size_t pem_len,
			    const unsigned char *alg_id, size_t alg_len)
{
	unsigned char der[DER_MAX];
	size_t len;

	if (pem_decode(pem, pem_len, der, &len) != 0)
		return NULL;
	return pkcs8_pem(alg_id, alg_len, der, len);
}

/* The RSAPrivateKey inside a PKCS#8 PEM, as PKCS#1 PEM; or NULL. */
static char *pkcs8_to_pkcs1(const unsigned char *pem, size_t pem_len)
{
	unsigned char der[DER_MAX];
	const unsigned char *p = der, *end, *key;
	size_t len;

	if (pem_decode(pem, pem_len, der, &len) != 0)
		return NULL;
	end = der + len;
	p = der_get(&p, end, 0x30, &len);
	if (!p)
		return NULL;
	end = p + len;
	if (!der_get(&p, end, 0x02, &len) || !der_get(&p, end, 0x30, &len))
		return NULL;
	key = der_get(&p, end, 0x04, &len);
	return key ? pem_encode("RSA PRIVATE KEY", key, len) : NULL;
}

static void test_generate_save_load(struct signer_key **key_out,
				    struct signer_key **loaded_out)
{
	struct signer_key *key = NULL, *loaded = NULL, *p8key = NULL;
	unsigned char *blob = NULL, *blob2 = NULL;
	unsigned char n[SIGNER_SIG_MAX], n2[SIGNER_SIG_MAX];
	size_t len = 0, len2 = 0, n_len, i;
	struct ks_err err = {""};
	struct jwk jwk, jwk2;
	char *p8;
	int rc, private_member = 0;

	CHECK_EQ_INT(signer_alg_supported("RS256"), 1, "RS256 supported");
	rc = signer_generate(&key, "RS256", 0, &err);
	CHECK_EQ_INT(rc, 0, "generate RS256: %s", err.text);
	if (rc)
		return;
	CHECK(strcmp(signer_key_alg(key), "RS256") == 0, "alg of new key");

	rc = signer_save(key, &blob, &len, &err);
	CHECK_EQ_INT(rc, 0, "save: %s", err.text);
	CHECK(starts_with(blob, len, PKCS1_BEGIN), "blob is not PKCS#1 PEM");
	CHECK(len > strlen(PKCS1_END) &&
		      memcmp(blob + len - strlen(PKCS1_END), PKCS1_END,
			     strlen(PKCS1_END)) == 0,
	      "blob does not end with the PKCS#1 footer");

	CHECK_EQ_INT(get_jwk(key, &jwk), 0, "public JWK");
	CHECK_EQ_INT(jwk.count, 3, "number of JWK members");
	CHECK(strcmp(jwk.names[0], "kty") == 0 &&
		      strcmp(jwk.names[1], "n") == 0 &&
		      strcmp(jwk.names[2], "e") == 0,
	      "JWK members are not kty, n, e in order");
	for (i = 0; i < 8; i++) {
		static const char *const priv[] = {"d",	 "p",  "q",
						   "dp", "dq", "qi"};
		size_t j;

		for (j = 0; j < sizeof(priv) / sizeof(priv[0]); j++)
			if (strcmp(jwk.names[i], priv[j]) == 0)
				private_member++;
	}
	CHECK_EQ_INT(private_member, 0, "a private JWK member was exported");
	CHECK(strcmp(jwk.kty, "RSA") == 0, "kty is \"%s\"", jwk.kty);
	CHECK(strcmp(jwk.e, "AQAB") == 0, "e is \"%s\"", jwk.e);
	CHECK_EQ_INT(strlen(jwk.n), 342, "length of n in base64url");
	n_len = key_modulus(key, n);
	CHECK_EQ_INT(n_len, 256, "n decodes to 256 bytes");
	CHECK(n[0] & 0x80, "n has a leading zero or is short");
	CHECK(n[255] & 1, "n is even");

	snprintf(err.text, sizeof(err.text), "untouched");
	rc = signer_load(&loaded, blob, len, &err);
	CHECK_EQ_INT(rc, 0, "load the saved blob: %s", err.text);
	CHECK(strcmp(err.text, "untouched") == 0,
	      "a successful load wrote \"%s\"", err.text);
	if (rc == 0) {
		CHECK(strcmp(signer_key_alg(loaded), "RS256") == 0,
		      "alg of loaded key");
		CHECK_EQ_INT(get_jwk(loaded, &jwk2), 0, "JWK of loaded key");
		CHECK(strcmp(jwk.n, jwk2.n) == 0 && strcmp(jwk2.e, "AQAB") == 0,
		      "loaded key has another public key");
		CHECK(key_modulus(loaded, n2) == 256 && memcmp(n, n2, 256) == 0,
		      "loaded modulus differs");
		rc = signer_save(loaded, &blob2, &len2, &err);
		CHECK_EQ_INT(rc, 0, "save the loaded key: %s", err.text);
		CHECK(len2 == len && memcmp(blob, blob2, len) == 0,
		      "save, load, save is not byte-identical");
		signer_blob_free(blob2, len2);
	}

	p8 = pkcs1_to_pkcs8(blob, len, alg_rsa, sizeof(alg_rsa));
	CHECK(p8 != NULL, "could not build a PKCS#8 blob");
	if (p8) {
		rc = signer_load(&p8key, (const unsigned char *)p8, strlen(p8),
				 &err);
		CHECK_EQ_INT(rc, 0, "load PKCS#8 PEM: %s", err.text);
		CHECK(rc == 0 && key_modulus(p8key, n2) == 256 &&
			      memcmp(n, n2, 256) == 0,
		      "PKCS#8 key has another modulus");
		signer_key_free(p8key);
		free(p8);
	}

	signer_blob_free(blob, len);
	*key_out = key;
	*loaded_out = loaded;
}

static void test_jwk_stop(const struct signer_key *key)
{
	struct jwk jwk;

	memset(&jwk, 0, sizeof(jwk));
	jwk.stop_at = 1;
	CHECK_EQ_INT(signer_public_jwk(key, jwk_collect, &jwk), 7,
		     "callback's value is not returned");
	CHECK_EQ_INT(jwk.count, 2, "callback called after it stopped");
	CHECK_EQ_INT(signer_public_jwk(NULL, jwk_collect, &jwk), KS_EINVAL,
		     "public JWK of NULL key");
	CHECK_EQ_INT(signer_public_jwk(key, NULL, &jwk), KS_EINVAL,
		     "public JWK without callback");
}

static void test_sign_verify(const struct signer_key *key,
			     const struct signer_key *loaded,
			     unsigned char *ref_sig)
{
	unsigned char sig[SIGNER_SIG_MAX], sig2[SIGNER_SIG_MAX];
	unsigned char data[sizeof(jws_input)];
	size_t len = sizeof(sig), len2 = sizeof(sig2), dlen;
	size_t bits[] = {0, 7, 1000, 2047};
	int rc;
	size_t i;

	memcpy(data, jws_input, sizeof(data));
	dlen = strlen(jws_input);
	rc = signer_sign(key, data, dlen, sig, &len);
	CHECK_EQ_INT(rc, 0, "sign");
	CHECK_EQ_INT(len, 256, "RS256 signature length");
	memcpy(ref_sig, sig, 256);
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len), 0, "verify");
	if (loaded) {
		CHECK_EQ_INT(signer_verify(loaded, data, dlen, sig, len), 0,
			     "verify with the loaded key");
		CHECK_EQ_INT(signer_sign(loaded, data, dlen, sig2, &len2), 0,
			     "sign with the loaded key");
		CHECK(len2 == len && memcmp(sig, sig2, len) == 0,
		      "PKCS#1 v1.5 signatures of one key differ");
	}

	for (i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		sig[bits[i] / 8] ^= (unsigned char)(1u << bits[i] % 8);
		CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len),
			     KS_EBADSIG, "signature bit %zu flipped", bits[i]);
		sig[bits[i] / 8] ^= (unsigned char)(1u << bits[i] % 8);
	}
	for (i = 0; i < dlen * 8; i += 37) {
		data[i / 8] ^= (unsigned char)(1u << i % 8);
		CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len),
			     KS_EBADSIG, "data bit %zu flipped", i);
		data[i / 8] ^= (unsigned char)(1u << i % 8);
	}
	CHECK_EQ_INT(signer_verify(key, data, dlen - 1, sig, len), KS_EBADSIG,
		     "data one byte short");
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len - 1), KS_EBADSIG,
		     "signature one byte short");
	sig[len] = 0;
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len + 1), KS_EBADSIG,
		     "signature one byte long");
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, 0), KS_EBADSIG,
		     "empty signature");
	memset(sig2, 0, 256);
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig2, 256), KS_EBADSIG,
		     "all-zero signature");
	memset(sig2, 0xff, 256);
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig2, 256), KS_EBADSIG,
		     "signature above the modulus");
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len), 0,
		     "verify after the flips");

	/* Empty data is a valid input. */
	len2 = sizeof(sig2);
	CHECK_EQ_INT(signer_sign(key, NULL, 0, sig2, &len2), 0,
		     "sign empty data");
	CHECK_EQ_INT(signer_verify(key, "", 0, sig2, len2), 0,
		     "verify empty data");

	/* Buffer too small: KS_EINVAL and *sig_len 0. */
	len2 = 255;
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, &len2), KS_EINVAL,
		     "255-byte signature buffer");
	CHECK_EQ_INT(len2, 0, "*sig_len after a failure");
	len2 = 0;
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, &len2), KS_EINVAL,
		     "0-byte signature buffer");
	len2 = 256;
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, &len2), 0,
		     "256-byte signature buffer");

	len2 = sizeof(sig2);
	CHECK_EQ_INT(signer_sign(NULL, data, dlen, sig2, &len2), KS_EINVAL,
		     "sign with NULL key");
	CHECK_EQ_INT(len2, 0, "*sig_len after NULL key");
	len2 = sizeof(sig2);
	CHECK_EQ_INT(signer_sign(key, NULL, 1, sig2, &len2), KS_EINVAL,
		     "sign NULL data");
	CHECK_EQ_INT(signer_sign(key, data, dlen, NULL, &len2), KS_EINVAL,
		     "sign into NULL");
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, NULL), KS_EINVAL,
		     "sign with NULL sig_len");
	CHECK_EQ_INT(signer_verify(NULL, data, dlen, sig, len), KS_EINVAL,
		     "verify with NULL key");
	CHECK_EQ_INT(signer_verify(key, data, dlen, NULL, 5), KS_EINVAL,
		     "verify NULL signature");
}

static void check_generate_fails(const char *alg, int want)
{
	struct signer_key *key = DUMMY_KEY;
	struct ks_err err = {""};

	CHECK_EQ_INT(signer_generate(&key, alg, 0, &err), want,
		     "generate \"%s\"", alg ? alg : "(null)");
	CHECK(key == NULL, "out-param not cleared for \"%s\"",
	      alg ? alg : "(null)");
	CHECK(err.text[0] != '\0', "no detail for \"%s\"",
	      alg ? alg : "(null)");
	CHECK_EQ_INT(signer_alg_supported(alg), 0, "\"%s\" supported",
		     alg ? alg : "(null)");
}

static void test_bad_generate(void)
{
	static const char *const unknown[] = {
		"HS256", "none",  "rs256",   "ES256 ", " ES256", "RS384",
		"ps256", "EDDSA", "Ed25519", "ES256K", "ES384",	 "",
	};
	size_t i;

	for (i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
		check_generate_fails(unknown[i], KS_EUNSUPPORTED);
	check_generate_fails(NULL, KS_EINVAL);
	CHECK_EQ_INT(signer_generate(NULL, "RS256", 0, NULL), KS_EINVAL,
		     "generate into NULL");
	CHECK(signer_key_alg(NULL) == NULL, "alg of NULL key");
	signer_key_free(NULL);
	signer_blob_free(NULL, 0);
}

static void check_load_fails(const void *blob, size_t len, int want,
			     const char *what)
{
	struct signer_key *key = DUMMY_KEY;
	struct ks_err err = {""};

	CHECK_EQ_INT(signer_load(&key, blob, len, &err), want, "load %s", what);
	CHECK(key == NULL, "out-param not cleared for %s", what);
	CHECK(err.text[0] != '\0', "no detail for %s", what);
	if (key != DUMMY_KEY)
		signer_key_free(key);
}

static void test_bad_load(const struct signer_key *key)
{
	static const char garbage[] = "this is not a key";
	static const char bad_body[] = "-----BEGIN RSA PRIVATE KEY-----\n"
				       "AAAA!!!!not base64\n"
				       "-----END RSA PRIVATE KEY-----\n";
	unsigned char *blob = NULL, random[512];
	size_t len = 0, i;

	check_load_fails(garbage, strlen(garbage), KS_ECORRUPT, "garbage");
	check_load_fails(bad_body, strlen(bad_body), KS_ECORRUPT,
			 "a PEM with a bad body");
	check_load_fails(rsa_1024_pem, strlen(rsa_1024_pem), KS_ECORRUPT,
			 "a 1024-bit RSA key");
	check_load_fails("", 0, KS_ECORRUPT, "an empty blob");
	check_load_fails(NULL, 10, KS_EINVAL, "a NULL blob");
	for (i = 0; i < sizeof(random); i++)
		random[i] = (unsigned char)(i * 131 + 7);
	check_load_fails(random, sizeof(random), KS_ECORRUPT, "random bytes");
	CHECK_EQ_INT(signer_load(NULL, (const unsigned char *)garbage, 5, NULL),
		     KS_EINVAL, "load into NULL");

	if (signer_save(key, &blob, &len, NULL) != 0) {
		CHECK(0, "save");
		return;
	}
	check_load_fails(blob, len / 2, KS_ECORRUPT, "half a PEM");
	check_load_fails(blob, len - strlen(PKCS1_END), KS_ECORRUPT,
			 "a PEM without its footer");
	check_load_fails(blob + 1, len - 1, KS_ECORRUPT,
			 "a PEM without its first byte");
	/*
	 * Base64 character 30 of the second line is inside the modulus, which
	 * starts at DER byte 12; the key still parses, but no longer signs.
	 */
	i = strlen(PKCS1_BEGIN) + 65 + 30;
	blob[i] = blob[i] == 'A' ? 'B' : 'A';
	check_load_fails(blob, len, KS_ECORRUPT,
			 "a key with a changed modulus");
	signer_blob_free(blob, len);

	CHECK_EQ_INT(signer_save(NULL, &blob, &len, NULL), KS_EINVAL,
		     "save NULL key");
	CHECK(blob == NULL && len == 0, "save out-params not cleared");
}

/*
 * One thread's share: sign and verify with key; every signature is sig_len
 * bytes and, for a deterministic algorithm, ref_sig (else NULL).
 */
struct thread_arg {
	const struct signer_key *key;
	const unsigned char *ref_sig;
	size_t sig_len;
	int failures;
};

static void *sign_thread(void *p)
{
	struct thread_arg *arg = p;
	unsigned char sig[SIGNER_SIG_MAX];
	size_t len;
	int i;

	for (i = 0; i < 16; i++) {
		len = sizeof(sig);
		if (signer_sign(arg->key, jws_input, strlen(jws_input), sig,
				&len) != 0 ||
		    len != arg->sig_len ||
		    (arg->ref_sig && memcmp(sig, arg->ref_sig, len) != 0) ||
		    signer_verify(arg->key, jws_input, strlen(jws_input), sig,
				  len) != 0)
			arg->failures++;
	}
	return NULL;
}

/* Many threads, one key: every signature is the reference signature. */
static void test_threads(const struct signer_key *key,
			 const unsigned char *ref_sig, size_t sig_len)
{
	pthread_t tids[4];
	struct thread_arg args[4];
	int i, started = 0, failures = 0;

	for (i = 0; i < 4; i++) {
		args[i] = (struct thread_arg){key, ref_sig, sig_len, 0};
		if (pthread_create(&tids[i], NULL, sign_thread, &args[i]) != 0)
			break;
		started++;
	}
	CHECK_EQ_INT(started, 4, "threads started");
	for (i = 0; i < started; i++) {
		pthread_join(tids[i], NULL);
		failures += args[i].failures;
	}
	CHECK_EQ_INT(failures, 0, "concurrent %s signatures wrong",
		     signer_key_alg(key));
}

static int write_file(const char *dir, const char *name, const void *data,
		      size_t len)
{
	char path[512];
	FILE *f;
	int ok;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		return -1;
	ok = fwrite(data, 1, len, f) == len;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* Read a whole file into a malloc'ed buffer with a NUL after it. */
static unsigned char *read_file(const char *dir, const char *name, size_t *len)
{
	char path[512];
	unsigned char *buf;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (!f)
		return NULL;
	buf = malloc(65536);
	*len = buf ? fread(buf, 1, 65535, f) : 0;
	if (buf)
		buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* Run an openssl command line in dir; returns its exit status. */
static int run_openssl(const char *dir, const char *args)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && " OPENSSL_BIN " %s >/dev/null 2>&1", dir, args);
	return system(cmd);
}

/* The OpenSSL tool verifies our signatures; we load and verify its keys. */
static void test_interop(const struct signer_key *key)
{
	static const char *const files[] = {"key.pem",	"pub.pem",  "data",
					    "sig",	"bad.sig",  "mod.txt",
					    "ext8.pem", "ext1.pem", "ext.sig",
					    "enc8.pem", "enc1.pem"};
	char dir[] = "/tmp/jwksd-signer-XXXXXX", want[600], path[600];
	unsigned char *blob = NULL, *text, sig[SIGNER_SIG_MAX];
	unsigned char n[SIGNER_SIG_MAX], n2[SIGNER_SIG_MAX];
	size_t blob_len = 0, len = 0, sig_len = sizeof(sig), n_len, i, o;
	struct signer_key *ext1 = NULL, *ext8 = NULL;
	struct ks_err err = {""};

	if (access(OPENSSL_BIN, X_OK) != 0) {
		printf("note: %s not found; interop checks skipped\n",
		       OPENSSL_BIN);
		return;
	}
	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		return;
	}
	n_len = key_modulus(key, n);
	if (signer_save(key, &blob, &blob_len, NULL) != 0 ||
	    signer_sign(key, jws_input, strlen(jws_input), sig, &sig_len) ||
	    write_file(dir, "key.pem", blob, blob_len) ||
	    write_file(dir, "data", jws_input, strlen(jws_input)) ||
	    write_file(dir, "sig", sig, sig_len)) {
		CHECK(0, "writing the interop files");
		goto out;
	}
	sig[100] ^= 0x10;
	write_file(dir, "bad.sig", sig, sig_len);

	CHECK_EQ_INT(run_openssl(dir, "pkey -in key.pem -pubout -out pub.pem"),
		     0, "openssl pkey -pubout of our blob");
	CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -verify pub.pem "
				      "-signature sig data"),
		     0, "openssl dgst -verify of our RS256 signature");
	CHECK(run_openssl(dir, "dgst -sha256 -verify pub.pem "
			       "-signature bad.sig data") != 0,
	      "openssl accepted a changed signature");

	/* Our JWK "n" is the modulus OpenSSL reads from the blob. */
	CHECK_EQ_INT(run_openssl(dir, "rsa -in key.pem -noout -modulus "
				      "-out mod.txt"),
		     0, "openssl rsa -modulus");
	o = (size_t)snprintf(want, sizeof(want), "Modulus=");
	for (i = 0; i < n_len && o + 3 < sizeof(want); i++)
		o += (size_t)snprintf(want + o, sizeof(want) - o, "%02X", n[i]);
	text = read_file(dir, "mod.txt", &len);
	CHECK(text && strncmp((char *)text, want, strlen(want)) == 0,
	      "JWK n differs from openssl's modulus");
	free(text);

	/* A public key is not a key the store may hold. */
	text = read_file(dir, "pub.pem", &len);
	if (text)
		check_load_fails(text, len, KS_ECORRUPT, "a public key PEM");
	free(text);

	/* Keys from the tool: PKCS#8, then PKCS#1 as Python tools write. */
	CHECK_EQ_INT(run_openssl(dir, "genpkey -algorithm RSA -pkeyopt "
				      "rsa_keygen_bits:2048 -out ext8.pem"),
		     0, "openssl genpkey");
	CHECK_EQ_INT(run_openssl(dir, "rsa -in ext8.pem -traditional "
				      "-out ext1.pem"),
		     0, "openssl rsa -traditional");
	text = read_file(dir, "ext8.pem", &len);
	CHECK(text && signer_load(&ext8, text, len, &err) == 0,
	      "load openssl's PKCS#8 key: %s", err.text);
	free(text);
	text = read_file(dir, "ext1.pem", &len);
	CHECK(text && starts_with(text, len, PKCS1_BEGIN) &&
		      signer_load(&ext1, text, len, &err) == 0,
	      "load openssl's PKCS#1 key: %s", err.text);
	free(text);
	if (ext1 && ext8) {
		CHECK(key_modulus(ext1, n) == 256 &&
			      key_modulus(ext8, n2) == 256 &&
			      memcmp(n, n2, 256) == 0,
		      "PKCS#1 and PKCS#8 forms give other keys");
		CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -sign ext1.pem "
					      "-out ext.sig data"),
			     0, "openssl dgst -sign");
		text = read_file(dir, "ext.sig", &len);
		CHECK(text && signer_verify(ext8, jws_input, strlen(jws_input),
					    text, len) == 0,
		      "openssl's signature does not verify");
		free(text);
		sig_len = sizeof(sig);
		CHECK(signer_sign(ext1, jws_input, strlen(jws_input), sig,
				  &sig_len) == 0 &&
			      write_file(dir, "sig", sig, sig_len) == 0,
		      "sign with openssl's key");
		CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -prverify "
					      "ext8.pem -signature sig data"),
			     0, "openssl verifies a signature by its key");
	}

	/* Encrypted keys are refused, without asking for a passphrase. */
	run_openssl(dir, "pkcs8 -topk8 -in ext8.pem -passout pass:x "
			 "-out enc8.pem");
	run_openssl(dir, "rsa -in ext8.pem -traditional -aes128 "
			 "-passout pass:x -out enc1.pem");
	text = read_file(dir, "enc8.pem", &len);
	if (text)
		check_load_fails(text, len, KS_ECORRUPT, "encrypted PKCS#8");
	free(text);
	text = read_file(dir, "enc1.pem", &len);
	if (text)
		check_load_fails(text, len, KS_ECORRUPT, "encrypted PKCS#1");
	free(text);

out:
	signer_key_free(ext1);
	signer_key_free(ext8);
	signer_blob_free(blob, blob_len);
	for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	rmdir(dir);
}

/*
 * Every algorithm of signer.h, from a table: what its blob, public JWK and
 * signatures look like.
 */
struct alg_case {
	const char *alg;
	unsigned int rsa_bits;
	/* The PEM label of the blob. */
	const char *label;
	size_t sig_len;
	/* Whether two signatures of the same data are the same. */
	int deterministic;
	/* The public JWK members, in order; NULL-terminated. */
	const char *members[5];
	/* Their values where signer.h fixes them (kty, crv, e), else NULL. */
	const char *fixed[5];
	/* The decoded length of each member that is not fixed. */
	size_t widths[5];
};

static const struct alg_case alg_cases[] = {
	{"RS256",
	 0,
	 "RSA PRIVATE KEY",
	 256,
	 1,
	 {"kty", "n", "e", NULL},
	 {"RSA", NULL, "AQAB"},
	 {0, 256, 0}},
	{"RS256",
	 3072,
	 "RSA PRIVATE KEY",
	 384,
	 1,
	 {"kty", "n", "e", NULL},
	 {"RSA", NULL, "AQAB"},
	 {0, 384, 0}},
	{"PS256",
	 0,
	 "PRIVATE KEY",
	 256,
	 0,
	 {"kty", "n", "e", NULL},
	 {"RSA", NULL, "AQAB"},
	 {0, 256, 0}},
	{"PS256",
	 4096,
	 "PRIVATE KEY",
	 512,
	 0,
	 {"kty", "n", "e", NULL},
	 {"RSA", NULL, "AQAB"},
	 {0, 512, 0}},
	{"ES256",
	 0,
	 "PRIVATE KEY",
	 64,
	 0,
	 {"kty", "crv", "x", "y", NULL},
	 {"EC", "P-256", NULL, NULL},
	 {0, 0, 32, 32}},
	{"EdDSA",
	 0,
	 "PRIVATE KEY",
	 64,
	 1,
	 {"kty", "crv", "x", NULL},
	 {"OKP", "Ed25519", NULL},
	 {0, 0, 32}},
};

/* All public JWK members of a key, in order. */
struct members {
	int count;
	char name[8][16];
	char value[8][B64URL_ENCODED_LEN(SIGNER_SIG_MAX) + 1];
};

static int members_collect(const char *name, const char *value, void *arg)
{
	struct members *m = arg;

	if (m->count < 8) {
		snprintf(m->name[m->count], sizeof(m->name[0]), "%s", name);
		snprintf(m->value[m->count], sizeof(m->value[0]), "%s", value);
	}
	m->count++;
	return 0;
}

static int get_members(const struct signer_key *key, struct members *m)
{
	memset(m, 0, sizeof(*m));
	return signer_public_jwk(key, members_collect, m);
}

static int members_equal(const struct members *a, const struct members *b)
{
	int i;

	if (a->count != b->count || a->count > 8)
		return 0;
	for (i = 0; i < a->count; i++)
		if (strcmp(a->name[i], b->name[i]) != 0 ||
		    strcmp(a->value[i], b->value[i]) != 0)
			return 0;
	return 1;
}

/* The value of member name, or "". */
static const char *member(const struct members *m, const char *name)
{
	int i;

	for (i = 0; i < m->count && i < 8; i++)
		if (strcmp(m->name[i], name) == 0)
			return m->value[i];
	return "";
}

/* Member name decoded into out (SIGNER_SIG_MAX + 2 bytes); 0 if none. */
static size_t member_bytes(const struct members *m, const char *name,
			   unsigned char *out)
{
	const char *v = member(m, name);
	size_t len = 0;

	if (!v[0] || b64url_decode(out, &len, v, strlen(v)) != 0)
		return 0;
	return len;
}

/*
 * The SubjectPublicKeyInfo (DER) of the public key that the members of a
 * JWK describe, built from them alone, into spki (DER_MAX bytes); its
 * length, or 0. RSA keys get rsaEncryption, whatever their algorithm.
 */
static size_t spki_from_jwk(const struct members *m, unsigned char *spki)
{
	unsigned char a[SIGNER_SIG_MAX + 2], b[SIGNER_SIG_MAX + 2];
	unsigned char key[DER_MAX];
	const unsigned char *alg_id;
	const char *kty = member(m, "kty");
	size_t alg_len, na, nb, n = 1, len;

	key[0] = 0; /* no unused bits in the BIT STRING */
	if (strcmp(kty, "RSA") == 0) {
		na = member_bytes(m, "n", a);
		nb = member_bytes(m, "e", b);
		if (!na || !nb)
			return 0;
		len = der_put_uint(key + 1, a, na);
		len += der_put_uint(key + 1 + len, b, nb);
		n += der_put(key + 1, 0x30, key + 1, len);
		alg_id = alg_rsa;
		alg_len = sizeof(alg_rsa);
	} else if (strcmp(kty, "EC") == 0) {
		if (member_bytes(m, "x", a) != 32 ||
		    member_bytes(m, "y", b) != 32)
			return 0;
		key[n++] = 0x04; /* an uncompressed point */
		memcpy(key + n, a, 32);
		memcpy(key + n + 32, b, 32);
		n += 64;
		alg_id = alg_p256;
		alg_len = sizeof(alg_p256);
	} else if (strcmp(kty, "OKP") == 0) {
		if (member_bytes(m, "x", a) != 32)
			return 0;
		memcpy(key + n, a, 32);
		n += 32;
		alg_id = alg_ed25519;
		alg_len = sizeof(alg_ed25519);
	} else {
		return 0;
	}
	memcpy(spki, alg_id, alg_len);
	len = alg_len + der_put(spki + alg_len, 0x03, key, n);
	return der_put(spki, 0x30, spki, len);
}

/* The subjectPublicKey BIT STRING of an SPKI: its content, or NULL. */
static const unsigned char *spki_key(const unsigned char *spki, size_t len,
				     size_t *key_len)
{
	const unsigned char *p = spki, *end = spki + len;

	p = der_get(&p, end, 0x30, &len);
	if (!p)
		return NULL;
	end = p + len;
	if (!der_get(&p, end, 0x30, &len))
		return NULL;
	return der_get(&p, end, 0x03, key_len);
}

/* A JWS ES256 signature (R || S) as DER ECDSA-Sig-Value; its length. */
static size_t es256_to_der(unsigned char *der, const unsigned char *sig)
{
	size_t n;

	n = der_put_uint(der, sig, 32);
	n += der_put_uint(der + n, sig + 32, 32);
	return der_put(der, 0x30, der, n);
}

static int contains(const unsigned char *text, const char *s)
{
	return text && strstr((const char *)text, s) != NULL;
}

/*
 * The OpenSSL tool, on its own, verifies a signature with the public key
 * built from the JWK members: the members are the signing key's, and the
 * signature has the JWS form and padding of the algorithm. The key in the
 * blob, when there is one, has the same public key (and for PS256 the
 * restrictions of signer.h).
 */
static void test_alg_interop(const struct alg_case *c,
			     const struct signer_key *key,
			     const unsigned char *blob, size_t blob_len,
			     const struct members *m)
{
	static const char *const files[] = {"key.pem", "pub.pem", "data",
					    "sig",     "bad.sig", "raw.sig",
					    "pub.der", "text.txt"};
	static const char pss[] = "-sigopt rsa_padding_mode:pss "
				  "-sigopt rsa_mgf1_md:sha256 ";
	char dir[] = "/tmp/jwksd-algs-XXXXXX", path[600], *pem = NULL;
	unsigned char spki[DER_MAX], sig[SIGNER_SIG_MAX], der[DER_MAX];
	unsigned char *text = NULL;
	const unsigned char *bits, *theirs;
	size_t spki_len, sig_len = sizeof(sig), der_len, len = 0, n1, n2, i;
	const char *alg = c->alg;

	if (access(OPENSSL_BIN, X_OK) != 0)
		return;
	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		return;
	}
	spki_len = spki_from_jwk(m, spki);
	CHECK(spki_len > 0, "%s: no public key from the JWK", alg);
	pem = spki_len ? pem_encode("PUBLIC KEY", spki, spki_len) : NULL;
	if (!pem ||
	    signer_sign(key, jws_input, strlen(jws_input), sig, &sig_len) ||
	    (blob && write_file(dir, "key.pem", blob, blob_len)) ||
	    write_file(dir, "pub.pem", pem, strlen(pem)) ||
	    write_file(dir, "data", jws_input, strlen(jws_input)) ||
	    write_file(dir, "raw.sig", sig, sig_len)) {
		CHECK(0, "%s: writing the interop files", alg);
		goto out;
	}
	/* What the tool verifies: the JWS signature, or its DER for ES256. */
	der_len = strcmp(alg, "ES256") == 0 ? es256_to_der(der, sig) : 0;
	write_file(dir, "sig", der_len ? der : sig,
		   der_len ? der_len : sig_len);
	sig[sig_len / 2] ^= 0x04;
	der_len = strcmp(alg, "ES256") == 0 ? es256_to_der(der, sig) : 0;
	write_file(dir, "bad.sig", der_len ? der : sig,
		   der_len ? der_len : sig_len);

	if (strcmp(alg, "RS256") == 0) {
		CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -verify pub.pem "
					      "-signature sig data"),
			     0, "RS256: openssl verifies");
	} else if (strcmp(alg, "PS256") == 0) {
		snprintf(path, sizeof(path),
			 "dgst -sha256 %s -sigopt rsa_pss_saltlen:32 "
			 "-verify pub.pem -signature sig data",
			 pss);
		CHECK_EQ_INT(
			run_openssl(dir, path), 0,
			"PS256: openssl verifies with PSS, MGF1-SHA256 and "
			"a 32-byte salt");
		snprintf(path, sizeof(path),
			 "dgst -sha256 %s -sigopt rsa_pss_saltlen:20 "
			 "-verify pub.pem -signature sig data",
			 pss);
		CHECK(run_openssl(dir, path) != 0,
		      "PS256: openssl verifies with a 20-byte salt");
		CHECK(run_openssl(dir, "dgst -sha256 -sigopt "
				       "rsa_padding_mode:pss -sigopt "
				       "rsa_mgf1_md:sha1 -verify pub.pem "
				       "-signature sig data") != 0,
		      "PS256: openssl verifies with MGF1-SHA1");
		CHECK(run_openssl(dir, "dgst -sha256 -verify pub.pem "
				       "-signature sig data") != 0,
		      "PS256: the signature verifies as PKCS#1 v1.5");
	} else if (strcmp(alg, "ES256") == 0) {
		CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -verify pub.pem "
					      "-signature sig data"),
			     0, "ES256: openssl verifies R || S made DER");
		CHECK(run_openssl(dir, "dgst -sha256 -verify pub.pem "
				       "-signature raw.sig data") != 0,
		      "ES256: openssl took R || S for DER");
	} else {
		CHECK_EQ_INT(run_openssl(dir, "pkeyutl -verify -pubin -inkey "
					      "pub.pem -rawin -in data "
					      "-sigfile sig"),
			     0, "EdDSA: openssl verifies");
	}
	if (strcmp(alg, "EdDSA") == 0)
		CHECK(run_openssl(dir, "pkeyutl -verify -pubin -inkey pub.pem "
				       "-rawin -in data -sigfile bad.sig") != 0,
		      "EdDSA: openssl accepted a changed signature");
	else
		CHECK(run_openssl(dir, "dgst -sha256 -verify pub.pem "
				       "-signature bad.sig data") != 0,
		      "%s: openssl accepted a changed signature", alg);

	/* The blob says which PSS parameters the key allows. */
	if (blob && strcmp(alg, "PS256") == 0) {
		CHECK_EQ_INT(run_openssl(dir, "pkey -in key.pem -noout "
					      "-text_pub -out text.txt"),
			     0, "PS256: openssl pkey -text_pub");
		text = read_file(dir, "text.txt", &len);
		CHECK(contains(text, "PSS parameter restrictions") &&
			      contains(text, "Hash Algorithm: SHA2-256") &&
			      contains(text, "MGF1 with SHA2-256") &&
			      contains(text, "Minimum Salt Length: 32"),
		      "PS256: the key's restrictions are not SHA-256, "
		      "MGF1-SHA-256, salt 32:\n%s",
		      text ? (char *)text : "");
		free(text);
	}

	/* The public key in the blob is the one of the JWK. */
	if (!blob)
		goto out;
	CHECK_EQ_INT(run_openssl(dir, "pkey -in key.pem -pubout -outform DER "
				      "-out pub.der"),
		     0, "%s: openssl pkey -pubout", alg);
	text = read_file(dir, "pub.der", &len);
	bits = spki_key(spki, spki_len, &n1);
	theirs = text ? spki_key(text, len, &n2) : NULL;
	CHECK(bits && theirs && n1 == n2 && memcmp(bits, theirs, n1) == 0,
	      "%s: the blob's public key is not the JWK's", alg);
	free(text);

out:
	free(pem);
	for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void test_alg(const struct alg_case *c)
{
	struct signer_key *key = NULL, *loaded = NULL;
	unsigned char *blob = NULL, *blob2 = NULL;
	unsigned char sig[SIGNER_SIG_MAX + 1], sig2[SIGNER_SIG_MAX];
	unsigned char bytes[SIGNER_SIG_MAX + 2];
	char begin[64], end[64];
	size_t len = 0, len2 = 0, slen = sizeof(sig), slen2, i, n;
	size_t dlen = strlen(jws_input), flips[4];
	unsigned char data[sizeof(jws_input)];
	struct ks_err err = {""};
	struct members m, m2;
	const char *alg = c->alg;
	int rc, same;

	rc = signer_generate(&key, alg, c->rsa_bits, &err);
	CHECK_EQ_INT(rc, 0, "generate %s of %u bits: %s", alg, c->rsa_bits,
		     err.text);
	if (rc)
		return;
	CHECK(strcmp(signer_key_alg(key), alg) == 0, "alg of a new %s key",
	      alg);

	/* The blob: PEM under the algorithm's label. */
	snprintf(begin, sizeof(begin), "-----BEGIN %s-----\n", c->label);
	snprintf(end, sizeof(end), "-----END %s-----\n", c->label);
	rc = signer_save(key, &blob, &len, &err);
	CHECK_EQ_INT(rc, 0, "save %s: %s", alg, err.text);
	CHECK(starts_with(blob, len, begin), "%s blob does not start with %s",
	      alg, begin);
	CHECK(len > strlen(end) &&
		      memcmp(blob + len - strlen(end), end, strlen(end)) == 0,
	      "%s blob does not end with %s", alg, end);

	/* The public JWK: the members of signer.h, in order, and no other. */
	CHECK_EQ_INT(get_members(key, &m), 0, "%s public JWK", alg);
	for (n = 0; n < 5 && c->members[n]; n++)
		;
	CHECK_EQ_INT(m.count, n, "%s: number of JWK members", alg);
	for (i = 0; i < n && i < 8; i++) {
		CHECK(strcmp(m.name[i], c->members[i]) == 0,
		      "%s: member %zu is \"%s\", not \"%s\"", alg, i, m.name[i],
		      c->members[i]);
		if (c->fixed[i])
			CHECK(strcmp(m.value[i], c->fixed[i]) == 0,
			      "%s: %s is \"%s\"", alg, c->members[i],
			      m.value[i]);
		else
			CHECK_EQ_INT(member_bytes(&m, c->members[i], bytes),
				     c->widths[i], "%s: decoded bytes of %s",
				     alg, c->members[i]);
	}
	if (strcmp(member(&m, "kty"), "RSA") == 0)
		CHECK(member_bytes(&m, "n", bytes) > 0 && (bytes[0] & 0x80),
		      "%s: n has a leading zero", alg);

	/* The saved blob loads as the same algorithm, key and bytes. */
	rc = signer_load(&loaded, blob, len, &err);
	CHECK_EQ_INT(rc, 0, "load a %s blob: %s", alg, err.text);
	if (rc == 0) {
		CHECK(strcmp(signer_key_alg(loaded), alg) == 0,
		      "a %s blob loads as %s", alg, signer_key_alg(loaded));
		CHECK(get_members(loaded, &m2) == 0 && members_equal(&m, &m2),
		      "%s: the loaded key has another public JWK", alg);
		rc = signer_save(loaded, &blob2, &len2, &err);
		CHECK(rc == 0 && len2 == len && memcmp(blob, blob2, len) == 0,
		      "%s: save, load, save is not byte-identical", alg);
		signer_blob_free(blob2, len2);
	}

	/* Sign and verify, across the two keys. */
	rc = signer_sign(key, jws_input, dlen, sig, &slen);
	CHECK_EQ_INT(rc, 0, "%s: sign", alg);
	CHECK_EQ_INT(slen, c->sig_len, "%s: signature length", alg);
	if (rc || slen != c->sig_len)
		goto out;
	CHECK_EQ_INT(signer_verify(key, jws_input, dlen, sig, slen), 0,
		     "%s: verify", alg);
	if (loaded) {
		CHECK_EQ_INT(signer_verify(loaded, jws_input, dlen, sig, slen),
			     0, "%s: verify with the loaded key", alg);
		slen2 = sizeof(sig2);
		CHECK_EQ_INT(signer_sign(loaded, jws_input, dlen, sig2, &slen2),
			     0, "%s: sign with the loaded key", alg);
		CHECK_EQ_INT(signer_verify(key, jws_input, dlen, sig2, slen2),
			     0, "%s: verify the loaded key's signature", alg);
		same = slen2 == slen && memcmp(sig, sig2, slen) == 0;
		CHECK(same == c->deterministic,
		      "%s: two signatures of the same data are %s", alg,
		      same ? "equal" : "different");
	}

	/* Any changed bit, any other length: KS_EBADSIG. */
	flips[0] = 0;
	flips[1] = 7;
	flips[2] = slen * 4 + 3;
	flips[3] = slen * 8 - 1;
	for (i = 0; i < 4; i++) {
		sig[flips[i] / 8] ^= (unsigned char)(1u << flips[i] % 8);
		CHECK_EQ_INT(signer_verify(key, jws_input, dlen, sig, slen),
			     KS_EBADSIG, "%s: signature bit %zu flipped", alg,
			     flips[i]);
		sig[flips[i] / 8] ^= (unsigned char)(1u << flips[i] % 8);
	}
	memcpy(data, jws_input, sizeof(data));
	for (i = 0; i < dlen * 8; i += 53) {
		data[i / 8] ^= (unsigned char)(1u << i % 8);
		CHECK_EQ_INT(signer_verify(key, data, dlen, sig, slen),
			     KS_EBADSIG, "%s: data bit %zu flipped", alg, i);
		data[i / 8] ^= (unsigned char)(1u << i % 8);
	}
	CHECK_EQ_INT(signer_verify(key, jws_input, dlen - 1, sig, slen),
		     KS_EBADSIG, "%s: data one byte short", alg);
	CHECK_EQ_INT(signer_verify(key, jws_input, dlen, sig, slen - 1),
		     KS_EBADSIG, "%s: signature one byte short", alg);
	sig[slen] = 0;
	CHECK_EQ_INT(signer_verify(key, jws_input, dlen, sig, slen + 1),
		     KS_EBADSIG, "%s: signature one byte long", alg);
	memset(sig2, 0, slen);
	CHECK_EQ_INT(signer_verify(key, jws_input, dlen, sig2, slen),
		     KS_EBADSIG, "%s: all-zero signature", alg);
	CHECK_EQ_INT(signer_verify(key, jws_input, dlen, sig, slen), 0,
		     "%s: verify after the flips", alg);

	/* The buffer: one byte short is KS_EINVAL, exact is enough. */
	slen2 = c->sig_len - 1;
	CHECK_EQ_INT(signer_sign(key, jws_input, dlen, sig2, &slen2), KS_EINVAL,
		     "%s: signature buffer one byte short", alg);
	CHECK_EQ_INT(slen2, 0, "%s: *sig_len after a failure", alg);
	slen2 = c->sig_len;
	CHECK_EQ_INT(signer_sign(key, jws_input, dlen, sig2, &slen2), 0,
		     "%s: signature buffer of the exact size", alg);
	CHECK_EQ_INT(slen2, c->sig_len, "%s: signature length", alg);

	test_alg_interop(c, key, blob, len, &m);
	test_threads(key, c->deterministic ? sig : NULL, c->sig_len);
out:
	signer_blob_free(blob, len);
	signer_key_free(loaded);
	signer_key_free(key);
}

/* Load a PEM that must load as alg; the key, or NULL. */
static struct signer_key *load_as(const char *pem, const char *alg,
				  const char *what)
{
	struct signer_key *key = NULL;
	struct ks_err err = {""};
	int rc;

	rc = signer_load(&key, (const unsigned char *)pem,
			 pem ? strlen(pem) : 0, &err);
	CHECK_EQ_INT(rc, 0, "load %s: %s", what, err.text);
	if (rc)
		return NULL;
	CHECK(strcmp(signer_key_alg(key), alg) == 0, "%s loads as %s, not %s",
	      what, signer_key_alg(key), alg);
	return key;
}

/* a's signature does not verify with b, nor b's with a. */
static void check_not_interchangeable(const struct signer_key *a,
				      const struct signer_key *b,
				      const char *what)
{
	unsigned char sig[SIGNER_SIG_MAX];
	size_t len = sizeof(sig);
	size_t dlen = strlen(jws_input);

	CHECK(signer_sign(a, jws_input, dlen, sig, &len) == 0 &&
		      signer_verify(a, jws_input, dlen, sig, len) == 0,
	      "%s: %s signs", what, signer_key_alg(a));
	CHECK_EQ_INT(signer_verify(b, jws_input, dlen, sig, len), KS_EBADSIG,
		     "%s: a %s signature verifies as %s", what,
		     signer_key_alg(a), signer_key_alg(b));
	len = sizeof(sig);
	CHECK(signer_sign(b, jws_input, dlen, sig, &len) == 0 &&
		      signer_verify(b, jws_input, dlen, sig, len) == 0,
	      "%s: %s signs", what, signer_key_alg(b));
	CHECK_EQ_INT(signer_verify(a, jws_input, dlen, sig, len), KS_EBADSIG,
		     "%s: a %s signature verifies as %s", what,
		     signer_key_alg(b), signer_key_alg(a));
}

/*
 * The key type picks the algorithm: one RSA key pair is RS256 as
 * rsaEncryption (PKCS#1 or PKCS#8) and PS256 as RSASSA-PSS, and the two
 * never accept each other's signatures.
 */
static void test_rsa_key_types(void)
{
	struct signer_key *rs = NULL, *ps = NULL, *twin = NULL, *twin8 = NULL;
	unsigned char *blob = NULL;
	size_t len = 0;
	struct members m1, m2;
	char *pem, *pem8 = NULL;

	/* RS256 key pair, rewrapped as an unrestricted RSA-PSS key. */
	if (signer_generate(&rs, "RS256", 0, NULL) != 0 ||
	    signer_save(rs, &blob, &len, NULL) != 0) {
		CHECK(0, "an RS256 key");
		goto out;
	}
	pem = pkcs1_to_pkcs8(blob, len, alg_rsa_pss, sizeof(alg_rsa_pss));
	signer_blob_free(blob, len);
	blob = NULL;
	twin = load_as(pem, "PS256", "an unrestricted RSA-PSS key");
	free(pem);
	if (twin) {
		CHECK(get_members(rs, &m1) == 0 &&
			      get_members(twin, &m2) == 0 &&
			      members_equal(&m1, &m2),
		      "RSA-PSS twin has another public key");
		check_not_interchangeable(rs, twin, "RS256 key as RSA-PSS");
		/* Without restrictions, the PSS parameters are still ours. */
		test_alg_interop(&alg_cases[2], twin, NULL, 0, &m2);
	}

	/* PS256 key pair, unwrapped to PKCS#1, and rewrapped as PKCS#8. */
	if (signer_generate(&ps, "PS256", 0, NULL) != 0 ||
	    signer_save(ps, &blob, &len, NULL) != 0) {
		CHECK(0, "a PS256 key");
		goto out;
	}
	pem = pkcs8_to_pkcs1(blob, len);
	CHECK(pem != NULL, "no PKCS#1 from a PS256 blob");
	signer_key_free(twin);
	twin = load_as(pem, "RS256", "a PS256 key pair as PKCS#1");
	if (pem)
		pem8 = pkcs1_to_pkcs8((const unsigned char *)pem, strlen(pem),
				      alg_rsa, sizeof(alg_rsa));
	free(pem);
	if (twin) {
		CHECK(get_members(ps, &m1) == 0 &&
			      get_members(twin, &m2) == 0 &&
			      members_equal(&m1, &m2),
		      "PKCS#1 twin has another public key");
		check_not_interchangeable(ps, twin, "PS256 key as PKCS#1");
	}
	twin8 = load_as(pem8, "RS256", "a PS256 key pair as rsaEncryption");
	if (twin8)
		check_not_interchangeable(ps, twin8,
					  "PS256 key as rsaEncryption");
out:
	free(pem8);
	signer_blob_free(blob, len);
	signer_key_free(twin8);
	signer_key_free(twin);
	signer_key_free(ps);
	signer_key_free(rs);
}

/* Known answers: RFC 8037 A.1 and A.4 (Ed25519), RFC 7515 A.3 (ES256). */
static const char rfc8037_d[] = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
static const char rfc8037_x[] = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
static const char rfc8037_input[] = "eyJhbGciOiJFZERTQSJ9."
				    "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
static const char rfc8037_sig[] =
	"hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt"
	"9g7sVvpAr_MuM0KAg";
static const char rfc7515_d[] = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
static const char rfc7515_x[] = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
static const char rfc7515_y[] = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
static const char rfc7515_input[] =
	"eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQo"
	"gImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
static const char rfc7515_sig[] =
	"DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQx"
	"fKTUJqPP3-Kg6NU1Q";

/* Decode base64url text of exactly want bytes into out; 0 or -1. */
static int unb64(unsigned char *out, const char *text, size_t want)
{
	size_t len = 0;

	if (b64url_decode(out, &len, text, strlen(text)) != 0 || len != want)
		return -1;
	return 0;
}

/*
 * Keys built from the RFC examples' private members: their JWK is the
 * RFC's, the Ed25519 signature is the RFC's byte for byte, the RFC's
 * ES256 signature verifies, and each saves back to the PKCS#8 it was
 * built as.
 */
static void test_known_answers(void)
{
	unsigned char d[32], x[32], y[32], inner[128], sig[SIGNER_SIG_MAX];
	unsigned char rfc_sig[64], der[80], *blob = NULL;
	char text[B64URL_ENCODED_LEN(SIGNER_SIG_MAX) + 1], *pem;
	struct signer_key *key;
	size_t n, len = 0, sig_len = sizeof(sig);
	struct members m;

	/* Ed25519: a CurvePrivateKey (OCTET STRING) in PKCS#8. */
	if (unb64(d, rfc8037_d, 32) || unb64(rfc_sig, rfc8037_sig, 64)) {
		CHECK(0, "RFC 8037 values");
		return;
	}
	n = der_put(inner, 0x04, d, 32);
	pem = pkcs8_pem(alg_ed25519, sizeof(alg_ed25519), inner, n);
	key = load_as(pem, "EdDSA", "the RFC 8037 key");
	if (key) {
		CHECK(get_members(key, &m) == 0 && m.count == 3 &&
			      strcmp(member(&m, "x"), rfc8037_x) == 0,
		      "RFC 8037: x is \"%s\"", member(&m, "x"));
		CHECK(signer_sign(key, rfc8037_input, strlen(rfc8037_input),
				  sig, &sig_len) == 0,
		      "RFC 8037: sign");
		b64url_encode(text, sig, sig_len);
		CHECK(strcmp(text, rfc8037_sig) == 0,
		      "RFC 8037: signature is %s", text);
		CHECK_EQ_INT(signer_verify(key, rfc8037_input,
					   strlen(rfc8037_input), rfc_sig, 64),
			     0, "RFC 8037: verify the RFC's signature");
		CHECK(signer_save(key, &blob, &len, NULL) == 0 && pem &&
			      len == strlen(pem) && memcmp(blob, pem, len) == 0,
		      "RFC 8037: saved as another PEM:\n%.*s", (int)len,
		      blob ? (char *)blob : "");
		signer_blob_free(blob, len);
		blob = NULL;
		signer_key_free(key);
	}
	free(pem);

	/*
	 * P-256: an ECPrivateKey of version 1, the private key and the
	 * public point ([1] BIT STRING), in PKCS#8.
	 */
	if (unb64(d, rfc7515_d, 32) || unb64(x, rfc7515_x, 32) ||
	    unb64(y, rfc7515_y, 32) || unb64(rfc_sig, rfc7515_sig, 64)) {
		CHECK(0, "RFC 7515 values");
		return;
	}
	n = 0;
	inner[n++] = 0x02;
	inner[n++] = 0x01;
	inner[n++] = 0x01;
	n += der_put(inner + n, 0x04, d, 32);
	inner[n++] = 0xa1;
	inner[n++] = 0x44;
	inner[n++] = 0x03;
	inner[n++] = 0x42;
	inner[n++] = 0x00;
	inner[n++] = 0x04;
	memcpy(inner + n, x, 32);
	memcpy(inner + n + 32, y, 32);
	n = der_put(inner, 0x30, inner, n + 64);
	pem = pkcs8_pem(alg_p256, sizeof(alg_p256), inner, n);
	key = load_as(pem, "ES256", "the RFC 7515 A.3 key");
	if (key) {
		CHECK(get_members(key, &m) == 0 && m.count == 4 &&
			      strcmp(member(&m, "crv"), "P-256") == 0 &&
			      strcmp(member(&m, "x"), rfc7515_x) == 0 &&
			      strcmp(member(&m, "y"), rfc7515_y) == 0,
		      "RFC 7515: x, y are \"%s\", \"%s\"", member(&m, "x"),
		      member(&m, "y"));
		CHECK_EQ_INT(signer_verify(key, rfc7515_input,
					   strlen(rfc7515_input), rfc_sig, 64),
			     0, "RFC 7515: verify the RFC's signature");
		n = es256_to_der(der, rfc_sig);
		CHECK_EQ_INT(signer_verify(key, rfc7515_input,
					   strlen(rfc7515_input), der, n),
			     KS_EBADSIG, "RFC 7515: a DER signature verifies");
		rfc_sig[63] ^= 1;
		CHECK_EQ_INT(signer_verify(key, rfc7515_input,
					   strlen(rfc7515_input), rfc_sig, 64),
			     KS_EBADSIG,
			     "RFC 7515: changed signature verifies");
		/* R and S swapped. */
		memcpy(sig, rfc_sig + 32, 32);
		memcpy(sig + 32, rfc_sig, 32);
		CHECK_EQ_INT(signer_verify(key, rfc7515_input,
					   strlen(rfc7515_input), sig, 64),
			     KS_EBADSIG, "RFC 7515: S || R verifies");
		/* R = 0, and S = 0: out of range, not just wrong. */
		memcpy(sig, rfc_sig, 64);
		memset(sig, 0, 32);
		CHECK_EQ_INT(signer_verify(key, rfc7515_input,
					   strlen(rfc7515_input), sig, 64),
			     KS_EBADSIG, "RFC 7515: R = 0 verifies");
		memcpy(sig, rfc_sig, 64);
		memset(sig + 32, 0, 32);
		CHECK_EQ_INT(signer_verify(key, rfc7515_input,
					   strlen(rfc7515_input), sig, 64),
			     KS_EBADSIG, "RFC 7515: S = 0 verifies");
		memset(sig, 0xff, 64);
		CHECK_EQ_INT(signer_verify(key, rfc7515_input,
					   strlen(rfc7515_input), sig, 64),
			     KS_EBADSIG, "RFC 7515: R, S above the order");
		CHECK(signer_save(key, &blob, &len, NULL) == 0 && pem &&
			      len == strlen(pem) && memcmp(blob, pem, len) == 0,
		      "RFC 7515: saved as another PEM:\n%.*s", (int)len,
		      blob ? (char *)blob : "");
		signer_blob_free(blob, len);
		blob = NULL;
		signer_key_free(key);
	}
	free(pem);

	/* SEC1 ("EC PRIVATE KEY") loads too, and saves as PKCS#8. */
	key = load_as(ec_p256_pem, "ES256", "a SEC1 P-256 key");
	if (key) {
		CHECK(signer_save(key, &blob, &len, NULL) == 0 &&
			      starts_with(blob, len,
					  "-----BEGIN PRIVATE KEY-----\n"),
		      "SEC1 key not saved as PKCS#8");
		signer_blob_free(blob, len);
		signer_key_free(key);
	}
}

/* A blob that must be refused, with a detail that names why. */
static void check_load_refused(const char *pem, const char *what,
			       const char *detail)
{
	struct signer_key *key = DUMMY_KEY;
	struct ks_err err = {""};

	CHECK_EQ_INT(signer_load(&key, (const unsigned char *)pem, strlen(pem),
				 &err),
		     KS_ECORRUPT, "load %s", what);
	CHECK(key == NULL, "out-param not cleared for %s", what);
	CHECK(strstr(err.text, detail) != NULL,
	      "detail for %s is \"%s\", without \"%s\"", what, err.text,
	      detail);
	if (key && key != DUMMY_KEY)
		signer_key_free(key);
}

/* Keys of a supported family that jwksd still refuses, and bad sizes. */
static void test_refused(void)
{
	static const unsigned int bad_bits[] = {1,    1024, 2047,
						2049, 5000, 8192};
	static const char *const rsa_algs[] = {"RS256", "PS256"};
	static const char *const other_algs[] = {"ES256", "EdDSA"};
	struct signer_key *key;
	struct ks_err err;
	size_t i, j;

	check_load_refused(ec_p384_pem, "an EC P-384 key", "secp384r1");
	check_load_refused(ec_p256_explicit_pem,
			   "a P-256 key with explicit parameters", "explicit");
	check_load_refused(ed448_pem, "an Ed448 key", "ED448");
	check_load_refused(rsa_pss_sha512_pem,
			   "an RSA-PSS key restricted to SHA-512", "512");
	check_load_refused(rsa_1024_pem, "a 1024-bit RSA key", "1024 bits");

	for (i = 0; i < 2; i++)
		for (j = 0; j < sizeof(bad_bits) / sizeof(bad_bits[0]); j++) {
			key = DUMMY_KEY;
			err.text[0] = '\0';
			CHECK_EQ_INT(signer_generate(&key, rsa_algs[i],
						     bad_bits[j], &err),
				     KS_EINVAL, "generate %s of %u bits",
				     rsa_algs[i], bad_bits[j]);
			CHECK(key == NULL && err.text[0],
			      "%s of %u bits: out-param or detail", rsa_algs[i],
			      bad_bits[j]);
		}
	/* Algorithms of one size ignore rsa_bits. */
	for (i = 0; i < 2; i++) {
		key = NULL;
		CHECK_EQ_INT(signer_generate(&key, other_algs[i], 5000, &err),
			     0, "generate %s with rsa_bits 5000: %s",
			     other_algs[i], err.text);
		signer_key_free(key);
	}
}

/* The table, in order: exactly the four algorithms of signer.h. */
static void test_alg_list(void)
{
	static const char *const want[] = {"RS256", "PS256", "ES256", "EdDSA"};
	const char *alg;
	size_t i;

	for (i = 0; i < 4; i++) {
		alg = signer_alg_at(i);
		CHECK(alg && strcmp(alg, want[i]) == 0, "algorithm %zu is %s",
		      i, alg ? alg : "(null)");
		CHECK_EQ_INT(signer_alg_supported(want[i]), 1, "%s supported",
			     want[i]);
	}
	CHECK(signer_alg_at(4) == NULL, "a fifth algorithm");
	CHECK(signer_alg_at((size_t)-1) == NULL, "algorithm SIZE_MAX");
}

static int all_zero(const unsigned char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

static void test_random(void)
{
	unsigned char a[32], b[32], *big;
	size_t big_len = 200000;

	CHECK_EQ_INT(signer_random(a, sizeof(a)), 0, "random");
	CHECK_EQ_INT(signer_random(b, sizeof(b)), 0, "random again");
	CHECK(memcmp(a, b, sizeof(a)) != 0, "two random outputs are equal");
	CHECK(!all_zero(a, sizeof(a)), "random output is zero");
	memcpy(b, a, sizeof(a));
	CHECK_EQ_INT(signer_random(a, 0), 0, "zero random bytes");
	CHECK(memcmp(a, b, sizeof(a)) == 0, "zero random bytes wrote some");
	CHECK_EQ_INT(signer_random(NULL, 0), 0, "zero random bytes, NULL");
	CHECK_EQ_INT(signer_random(NULL, 8), KS_EINVAL, "random into NULL");

	/* More than one call of the DRBG: every part is filled. */
	big = calloc(1, big_len);
	if (!big)
		return;
	CHECK_EQ_INT(signer_random(big, big_len), 0, "%zu random bytes",
		     big_len);
	CHECK(!all_zero(big, 64) && !all_zero(big + 65536, 64) &&
		      !all_zero(big + big_len - 64, 64),
	      "part of a large random output is zero");
	free(big);
}

int main(void)
{
	struct signer_key *key = NULL, *loaded = NULL;
	unsigned char ref_sig[SIGNER_SIG_MAX];
	size_t i;

	test_alg_list();
	test_bad_generate();
	test_refused();
	test_random();
	test_known_answers();
	test_rsa_key_types();
	for (i = 0; i < sizeof(alg_cases) / sizeof(alg_cases[0]); i++)
		test_alg(&alg_cases[i]);
	test_generate_save_load(&key, &loaded);
	if (key) {
		test_jwk_stop(key);
		test_sign_verify(key, loaded, ref_sig);
		test_bad_load(key);
		test_threads(key, ref_sig, 256);
		test_interop(key);
	}
	signer_key_free(loaded);
	signer_key_free(key);
	return TEST_REPORT();
}
