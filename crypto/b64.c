/*
 * Standard base64 (RFC 4648 §4) decoding, for HTTP Basic credentials
 * (RFC 7617), through OpenSSL's EVP_DecodeBlock; and the base64 SHA-256
 * of a text, for Content-Security-Policy hash sources.
 */
#include <string.h>

#include <openssl/evp.h>

#include "signer.h"

int b64_decode(unsigned char *dst, size_t *dst_len, const char *src,
	       size_t src_len)
{
	size_t pad = 0;
	int n;

	*dst_len = 0;
	/* EVP_DecodeBlock takes whitespace and lengths that are not 4k. */
	if (src_len % 4 || src_len > 65536 ||
	    strspn(src, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			"0123456789+/=") < src_len)
		return KS_EINVAL;
	while (pad < 2 && pad < src_len && src[src_len - 1 - pad] == '=')
		pad++;
	if (memchr(src, '=', src_len - pad))
		return KS_EINVAL;
	n = EVP_DecodeBlock(dst, (const unsigned char *)src, (int)src_len);
	if (n < 0 || (size_t)n < pad)
		return KS_EINVAL;
	*dst_len = (size_t)n - pad;
	return 0;
}

int b64_sha256(const void *data, size_t len, char *out, size_t cap)
{
	unsigned char md[32];
	unsigned int md_len = 0;

	if (cap < 45 || !EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL))
		return KS_ECRYPTO;
	EVP_EncodeBlock((unsigned char *)out, md, (int)md_len);
	return 0;
}
