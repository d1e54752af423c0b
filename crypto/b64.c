/*
 * Standard base64 (RFC 4648 §4) decoding, for HTTP Basic credentials
 * (RFC 7617), through OpenSSL's EVP_DecodeBlock.
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
