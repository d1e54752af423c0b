/*
 * Sealed key blobs (crypto/kek.c), which jwksd reads from a store file that
 * an attacker with write access to it may have changed: the first 8 bytes
 * of the input are the kid of the row (big-endian), the rest the blob.
 * kek_open() must refuse anything it did not seal for that kid, and what
 * it opens must seal and open again to the same bytes; kek_is_sealed() and
 * kek_sealed_by() must agree with it. The seeds in corpus/kek_open were
 * sealed under the secret below.
 */
#include <string.h>

#include "fuzz.h"
#include "kek.h"

static const char fuzz_secret[] = "fuzz secret, fixed for the target";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct kek *kek;
	unsigned char *plain = NULL, *again = NULL, *back = NULL;
	size_t plain_len = 0, again_len = 0, back_len = 0, i;
	int64_t kid = 0;
	int rc;

	if (!kek &&
	    kek_from_secret(&kek, fuzz_secret, sizeof(fuzz_secret) - 1, NULL))
		FUZZ_CHECK(0);
	if (size < 8)
		return 0;
	for (i = 0; i < 8; i++)
		kid = (int64_t)((uint64_t)kid << 8 | data[i]);
	data += 8;
	size -= 8;

	rc = kek_open(kek, kid, data, size, &plain, &plain_len, NULL);
	if (!kek_is_sealed(data, size))
		FUZZ_CHECK(rc == KS_ECORRUPT || rc == KS_EINVAL);
	if (rc) {
		FUZZ_CHECK(!plain && !plain_len);
		return 0;
	}
	FUZZ_CHECK(kek_sealed_by(kek, data, size));
	FUZZ_CHECK(plain_len + KEK_BLOB_OVERHEAD == size);
	FUZZ_CHECK(kek_seal(kek, kid, plain, plain_len, &again, &again_len,
			    NULL) == 0);
	FUZZ_CHECK(kek_open(kek, kid, again, again_len, &back, &back_len,
			    NULL) == 0);
	FUZZ_CHECK(back_len == plain_len && !memcmp(back, plain, plain_len));
	kek_blob_free(back, back_len);
	/* Bound to its row: another kid does not open it. */
	FUZZ_CHECK(kek_open(kek, kid ^ 1, again, again_len, &back, &back_len,
			    NULL) == KS_EBADSIG);
	kek_blob_free(plain, plain_len);
	kek_blob_free(again, again_len);
	return 0;
}
