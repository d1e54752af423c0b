/*
 * Encryption at rest: deriving a kek from a secret or a secret file, a blob
 * made outside jwksd (known answer), sealing and opening a real
 * signer_save() blob, the blob format, a fresh nonce per seal, a wrong
 * secret, a blob moved to another kid, every single-byte change, every
 * truncation, bad arguments, and sealing and opening on one kek from several
 * threads.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kek.h"
#include "signer.h"
#include "test.h"

#define PEM_BEGIN "-----BEGIN"
#define SECRET "correct horse battery staple"
#define SECRET_LEN (sizeof(SECRET) - 1)

/* Offsets in a sealed blob (include/kek.h). */
#define OFF_VERSION 4
#define OFF_ID 5
#define OFF_NONCE 13
#define OFF_CT 25

#define N_THREADS 4
#define N_ROUNDS 200

static int starts_with(const unsigned char *buf, size_t len, const char *s)
{
	size_t n = strlen(s);

	return len >= n && memcmp(buf, s, n) == 0;
}

static int contains(const unsigned char *buf, size_t len, const char *s)
{
	size_t n = strlen(s), i;

	for (i = 0; i + n <= len; i++)
		if (memcmp(buf + i, s, n) == 0)
			return 1;
	return 0;
}

static struct kek *kek_of(const void *secret, size_t len)
{
	struct kek *kek = NULL;
	struct ks_err err = {""};
	int rc;

	rc = kek_from_secret(&kek, secret, len, &err);
	CHECK_EQ_INT(rc, 0, "kek_from_secret: %s", err.text);
	return kek;
}

/*
 * Open blob under kek for kid and expect code; on success the plaintext
 * must equal want. A failure must hand back nothing.
 */
static void check_open(const struct kek *kek, int64_t kid,
		       const unsigned char *blob, size_t len, int code,
		       const unsigned char *want, size_t want_len,
		       const char *what)
{
	unsigned char *plain = (unsigned char *)&plain;
	size_t plain_len = 1;
	struct ks_err err = {""};
	int rc;

	rc = kek_open(kek, kid, blob, len, &plain, &plain_len, &err);
	CHECK_EQ_INT(rc, code, "%s: got %s (%s), want %s", what,
		     ks_err_name(rc), err.text, ks_err_name(code));
	if (rc == 0) {
		CHECK(plain && plain_len == want_len &&
			      memcmp(plain, want, want_len) == 0,
		      "%s: plaintext differs", what);
	} else {
		CHECK(!plain && plain_len == 0, "%s: output left set", what);
		CHECK(err.text[0], "%s: no detail text", what);
	}
	if (rc == 0)
		kek_blob_free(plain, plain_len);
}

/* Seal under one kek, open under the other: 0 or the code kek_open() gave. */
static int cross_open(const struct kek *a, const struct kek *b)
{
	static const unsigned char probe[] = "probe";
	unsigned char *blob = NULL, *plain = NULL;
	size_t blob_len = 0, plain_len = 0;
	int rc;

	rc = kek_seal(a, 1, probe, sizeof(probe), &blob, &blob_len, NULL);
	CHECK_EQ_INT(rc, 0, "kek_seal of the probe");
	if (rc)
		return rc;
	rc = kek_open(b, 1, blob, blob_len, &plain, &plain_len, NULL);
	if (rc == 0)
		CHECK(plain_len == sizeof(probe) &&
			      memcmp(plain, probe, plain_len) == 0,
		      "cross-opened probe differs");
	kek_blob_free(plain, plain_len);
	kek_blob_free(blob, blob_len);
	return rc;
}

static void test_bad_secret(void)
{
	static const unsigned char big[KEK_SECRET_MAX + 1];
	struct kek *kek = (struct kek *)(void *)&kek;
	struct ks_err err = {""};

	CHECK_EQ_INT(kek_from_secret(NULL, SECRET, SECRET_LEN, NULL), KS_EINVAL,
		     "NULL out-param");
	CHECK_EQ_INT(kek_from_secret(&kek, NULL, 4, &err), KS_EINVAL,
		     "NULL secret");
	CHECK(kek == NULL, "out-param not cleared");
	kek = (struct kek *)(void *)&kek;
	CHECK_EQ_INT(kek_from_secret(&kek, "", 0, &err), KS_EINVAL,
		     "empty secret");
	CHECK(kek == NULL && err.text[0], "empty secret: out or detail");
	CHECK_EQ_INT(kek_from_secret(&kek, big, sizeof(big), &err), KS_EINVAL,
		     "secret longer than KEK_SECRET_MAX");
	CHECK_EQ_INT(kek_from_secret(&kek, big, KEK_SECRET_MAX, &err), 0,
		     "secret of KEK_SECRET_MAX bytes: %s", err.text);
	kek_free(kek);
	kek_free(NULL);
	kek_blob_free(NULL, 0);
}

/* Secrets are bytes: NUL and a trailing newline count. */
static void test_derivation(const struct kek *kek)
{
	struct kek *same = kek_of(SECRET, SECRET_LEN);
	struct kek *nl = kek_of(SECRET "\n", SECRET_LEN + 1);
	struct kek *nul_b = kek_of("a\0b", 3), *nul_c = kek_of("a\0c", 3);
	struct kek *prefix = kek_of(SECRET, SECRET_LEN - 1);

	if (same && nl && nul_b && nul_c && prefix) {
		CHECK_EQ_INT(cross_open(kek, same), 0,
			     "same secret, another kek object");
		CHECK_EQ_INT(cross_open(same, kek), 0,
			     "same secret, the other way");
		CHECK_EQ_INT(cross_open(kek, nl), KS_EACCES,
			     "a trailing newline is part of the secret");
		CHECK_EQ_INT(cross_open(nul_b, nul_c), KS_EACCES,
			     "bytes after a NUL are part of the secret");
		CHECK_EQ_INT(cross_open(kek, prefix), KS_EACCES,
			     "a prefix of the secret");
	}
	kek_free(same);
	kek_free(nl);
	kek_free(nul_b);
	kek_free(nul_c);
	kek_free(prefix);
}

/*
 * A blob made outside jwksd, with Python's cryptography package and an
 * RFC 5869 HKDF written out by hand: SECRET, kid 42, nonce 00 01 .. 0b,
 * plaintext "jwksd kek known answer". It pins the salt, both infos, the AAD
 * and the layout: if any of them changes, stored blobs stop opening.
 */
static const unsigned char kat_blob[] =
	"\x4a\x57\x4b\x45\x01\x6e\x0f\x50\x81\x76\x53\x80\x64\x00\x01\x02"
	"\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\xc7\x5b\xe5\xb5\x0a\x69\xfe"
	"\x8b\x93\x73\x47\xb0\x35\x70\xfb\x78\xa2\xcf\xf7\x98\xf2\xaa\xf6"
	"\xfa\x1d\xf3\x41\xf3\x81\xb0\x85\xd6\xf4\x1f\x22\x3b\xc8\x79";
static const char kat_plain[] = "jwksd kek known answer";
/* The first 8 bytes of HKDF-SHA256(SECRET, salt, "jwksd kek id"). */
static const unsigned char kat_id[] = "\x6e\x0f\x50\x81\x76\x53\x80\x64";

static void test_known_answer(const struct kek *kek)
{
	static const unsigned char probe[] = "probe";
	unsigned char *blob = NULL;
	size_t blob_len = 0;

	check_open(kek, 42, kat_blob, sizeof(kat_blob) - 1, 0,
		   (const unsigned char *)kat_plain, sizeof(kat_plain) - 1,
		   "known-answer blob");
	check_open(kek, 41, kat_blob, sizeof(kat_blob) - 1, KS_EBADSIG, NULL, 0,
		   "known-answer blob, kid 41");
	CHECK_EQ_INT(
		kek_seal(kek, 1, probe, sizeof(probe), &blob, &blob_len, NULL),
		0, "kek_seal");
	if (blob)
		CHECK(memcmp(blob + OFF_ID, kat_id, 8) == 0,
		      "kek id is not HKDF(\"jwksd kek id\")");
	kek_blob_free(blob, blob_len);
}

/*
 * A real RS256 blob: sealed, it is no longer PEM; opened, it loads again.
 * Sets *blob_out to a blob sealed for kid 42.
 */
static void test_round_trip(const struct kek *kek, const unsigned char *pem,
			    size_t pem_len, unsigned char **blob_out,
			    size_t *blob_len_out)
{
	unsigned char *blob = NULL, *blob2 = NULL, *plain = NULL;
	size_t blob_len = 0, blob2_len = 0, plain_len = 0;
	struct signer_key *key = NULL;
	struct ks_err err = {""};
	int rc;

	CHECK(starts_with(pem, pem_len, PEM_BEGIN), "signer blob is PEM");
	CHECK_EQ_INT(kek_is_sealed(pem, pem_len), 0, "PEM counted as sealed");

	rc = kek_seal(kek, 42, pem, pem_len, &blob, &blob_len, &err);
	CHECK_EQ_INT(rc, 0, "kek_seal: %s", err.text);
	if (rc)
		return;
	CHECK_EQ_INT(blob_len, pem_len + KEK_BLOB_OVERHEAD, "sealed length");
	CHECK_EQ_INT(KEK_BLOB_OVERHEAD, 41, "overhead");
	CHECK(starts_with(blob, blob_len, "JWKE"), "sealed blob magic");
	CHECK(!starts_with(blob, blob_len, PEM_BEGIN), "sealed blob is PEM");
	CHECK_EQ_INT(blob[OFF_VERSION], 1, "version byte");
	CHECK_EQ_INT(kek_is_sealed(blob, blob_len), 1, "kek_is_sealed");
	CHECK(!contains(blob, blob_len, "PRIVATE KEY"),
	      "PEM text in the sealed blob");

	rc = kek_open(kek, 42, blob, blob_len, &plain, &plain_len, &err);
	CHECK_EQ_INT(rc, 0, "kek_open: %s", err.text);
	if (rc == 0) {
		CHECK(plain_len == pem_len && memcmp(plain, pem, pem_len) == 0,
		      "opened blob differs from the PEM");
		rc = signer_load(&key, plain, plain_len, &err);
		CHECK_EQ_INT(rc, 0, "signer_load of the opened blob: %s",
			     err.text);
		CHECK(key && strcmp(signer_key_alg(key), "RS256") == 0,
		      "opened key's algorithm");
		signer_key_free(key);
		kek_blob_free(plain, plain_len);
	}

	/* A fresh nonce: the same plaintext seals differently every time. */
	rc = kek_seal(kek, 42, pem, pem_len, &blob2, &blob2_len, &err);
	CHECK_EQ_INT(rc, 0, "second kek_seal: %s", err.text);
	if (rc == 0) {
		CHECK(blob2_len == blob_len &&
			      memcmp(blob, blob2, OFF_NONCE) == 0,
		      "headers of two seals differ");
		CHECK(memcmp(blob + OFF_NONCE, blob2 + OFF_NONCE, 12) != 0,
		      "two seals share a nonce");
		CHECK(memcmp(blob + OFF_CT, blob2 + OFF_CT,
			     blob_len - OFF_CT) != 0,
		      "two seals give the same ciphertext");
		check_open(kek, 42, blob2, blob2_len, 0, pem, pem_len,
			   "second seal");
	}
	kek_blob_free(blob2, blob2_len);
	*blob_out = blob;
	*blob_len_out = blob_len;
}

/* The row a blob is bound to, and the secret it was sealed under. */
static void test_binding(const struct kek *kek, const unsigned char *blob,
			 size_t blob_len, const unsigned char *pem,
			 size_t pem_len)
{
	static const int64_t kids[] = {0,	  1,	     -1,
				       INT64_MAX, INT64_MIN, (int64_t)1 << 40};
	unsigned char *b = NULL;
	struct ks_err err = {""};
	struct kek *other = kek_of(SECRET "!", SECRET_LEN + 1);
	size_t b_len = 0, i;

	check_open(kek, 42, blob, blob_len, 0, pem, pem_len, "kid 42");
	check_open(kek, 43, blob, blob_len, KS_EBADSIG, NULL, 0,
		   "moved to kid 43");
	check_open(kek, 42 + 256, blob, blob_len, KS_EBADSIG, NULL, 0,
		   "moved to kid 298");
	check_open(kek, 42 - ((int64_t)1 << 62), blob, blob_len, KS_EBADSIG,
		   NULL, 0, "moved to a kid differing in the top byte");
	check_open(kek, -42, blob, blob_len, KS_EBADSIG, NULL, 0,
		   "moved to kid -42");
	if (other) {
		check_open(other, 42, blob, blob_len, KS_EACCES, NULL, 0,
			   "wrong secret");
		kek_open(other, 42, blob, blob_len, &b, &b_len, &err);
		CHECK(strstr(err.text, "another secret") != NULL,
		      "wrong-secret detail: %s", err.text);
		kek_blob_free(b, b_len);
	}
	kek_free(other);

	for (i = 0; i < sizeof(kids) / sizeof(kids[0]); i++) {
		b = NULL;
		CHECK_EQ_INT(
			kek_seal(kek, kids[i], pem, pem_len, &b, &b_len, &err),
			0, "seal for kid %lld: %s", (long long)kids[i],
			err.text);
		if (!b)
			continue;
		check_open(kek, kids[i], b, b_len, 0, pem, pem_len,
			   "extreme kid");
		check_open(kek, kids[i] ^ 1, b, b_len, KS_EBADSIG, NULL, 0,
			   "extreme kid, low bit changed");
		kek_blob_free(b, b_len);
	}
}

/* What changing the byte at offset i does, by field. */
static int flip_code(size_t i)
{
	if (i < OFF_ID)
		return KS_ECORRUPT; /* magic, version */
	if (i < OFF_NONCE)
		return KS_EACCES; /* kek id */
	return KS_EBADSIG;	  /* nonce, ciphertext, tag */
}

/* Every change of every byte, and every truncation, is an error. */
static void test_damage(const struct kek *kek, const unsigned char *blob,
			size_t blob_len)
{
	static const unsigned char masks[] = {0x01, 0x80, 0xff};
	unsigned char *copy, *plain;
	size_t i, m, plain_len, wrong = 0, opened = 0;
	char what[64];
	int rc;

	copy = malloc(blob_len + 1);
	if (!copy) {
		CHECK(0, "malloc");
		return;
	}
	for (i = 0; i < blob_len; i++) {
		for (m = 0; m < sizeof(masks); m++) {
			memcpy(copy, blob, blob_len);
			copy[i] ^= masks[m];
			plain = NULL;
			plain_len = 0;
			rc = kek_open(kek, 42, copy, blob_len, &plain,
				      &plain_len, NULL);
			if (rc == 0) {
				opened++;
				kek_blob_free(plain, plain_len);
			} else if (rc != flip_code(i) || plain || plain_len) {
				wrong++;
			}
		}
	}
	CHECK_EQ_INT(opened, 0, "a changed blob opened");
	CHECK_EQ_INT(wrong, 0, "changed bytes gave the wrong code");

	/*
	 * Each prefix in a buffer of exactly its length, so that the
	 * sanitizers see any read past its end.
	 */
	for (i = 0; i < blob_len; i++) {
		unsigned char *cut = malloc(i ? i : 1);

		if (!cut) {
			CHECK(0, "malloc");
			break;
		}
		memcpy(cut, blob, i);
		snprintf(what, sizeof(what), "truncated to %zu bytes", i);
		check_open(kek, 42, cut, i,
			   i <= KEK_BLOB_OVERHEAD ? KS_ECORRUPT : KS_EBADSIG,
			   NULL, 0, what);
		free(cut);
	}
	memcpy(copy, blob, blob_len);
	copy[blob_len] = 0;
	check_open(kek, 42, copy, blob_len + 1, KS_EBADSIG, NULL, 0,
		   "one byte appended");

	/* Unknown versions, whatever follows. */
	memcpy(copy, blob, blob_len);
	copy[OFF_VERSION] = 2;
	check_open(kek, 42, copy, blob_len, KS_ECORRUPT, NULL, 0, "version 2");
	CHECK_EQ_INT(kek_is_sealed(copy, blob_len), 0, "version 2 is sealed");
	copy[OFF_VERSION] = 0;
	check_open(kek, 42, copy, blob_len, KS_ECORRUPT, NULL, 0, "version 0");
	free(copy);
}

static void test_bad_args(const struct kek *kek, const unsigned char *pem,
			  size_t pem_len)
{
	unsigned char *out = (unsigned char *)&out, *blob = NULL;
	size_t out_len = 1, blob_len = 0;
	struct ks_err err = {""};

	CHECK_EQ_INT(kek_seal(NULL, 1, pem, pem_len, &out, &out_len, &err),
		     KS_EINVAL, "seal: NULL kek");
	CHECK(!out && out_len == 0, "seal: outputs not cleared");
	CHECK_EQ_INT(kek_seal(kek, 1, NULL, 4, &out, &out_len, &err), KS_EINVAL,
		     "seal: NULL plaintext");
	CHECK_EQ_INT(kek_seal(kek, 1, pem, 0, &out, &out_len, &err), KS_EINVAL,
		     "seal: empty plaintext");
	CHECK_EQ_INT(kek_seal(kek, 1, pem, (size_t)KEK_PLAIN_MAX + 1, &out,
			      &out_len, &err),
		     KS_EINVAL, "seal: plaintext over KEK_PLAIN_MAX");
	CHECK_EQ_INT(kek_seal(kek, 1, pem, pem_len, NULL, &out_len, &err),
		     KS_EINVAL, "seal: NULL blob_out");
	CHECK_EQ_INT(kek_seal(kek, 1, pem, pem_len, &out, NULL, &err),
		     KS_EINVAL, "seal: NULL blob_len_out");
	CHECK(!out, "seal: output set on failure");

	if (kek_seal(kek, 1, pem, pem_len, &blob, &blob_len, NULL) != 0) {
		CHECK(0, "kek_seal");
		return;
	}
	out = (unsigned char *)&out;
	out_len = 1;
	CHECK_EQ_INT(kek_open(NULL, 1, blob, blob_len, &out, &out_len, &err),
		     KS_EINVAL, "open: NULL kek");
	CHECK(!out && out_len == 0, "open: outputs not cleared");
	CHECK_EQ_INT(kek_open(kek, 1, NULL, blob_len, &out, &out_len, &err),
		     KS_EINVAL, "open: NULL blob");
	CHECK_EQ_INT(kek_open(kek, 1, blob, blob_len, NULL, &out_len, &err),
		     KS_EINVAL, "open: NULL plain_out");
	CHECK_EQ_INT(kek_open(kek, 1, blob, blob_len, &out, NULL, &err),
		     KS_EINVAL, "open: NULL plain_len_out");
	kek_blob_free(blob, blob_len);

	/* PEM handed to kek_open(), and near-magic to kek_is_sealed(). */
	check_open(kek, 1, pem, pem_len, KS_ECORRUPT, NULL, 0, "PEM blob");
	CHECK_EQ_INT(kek_is_sealed(NULL, 0), 0, "NULL is sealed");
	CHECK_EQ_INT(kek_is_sealed((const unsigned char *)"JWKE", 4), 0,
		     "magic without a version is sealed");
	CHECK_EQ_INT(kek_is_sealed((const unsigned char *)"JWKE\x01", 5), 1,
		     "magic and version 1 is not sealed");
	CHECK_EQ_INT(kek_is_sealed((const unsigned char *)"jwke\x01", 5), 0,
		     "lowercase magic is sealed");
}

/* Write len bytes to dir/name with the given mode; 0 or -1. */
static int write_secret(const char *dir, const char *name, const void *data,
			size_t len, mode_t mode, char *path, size_t path_size)
{
	int fd, ok;

	snprintf(path, path_size, "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return -1;
	ok = write(fd, data, len) == (ssize_t)len && fchmod(fd, mode) == 0;
	return close(fd) == 0 && ok ? 0 : -1;
}

/* Read a secret file and expect code; on success compare with ref. */
static void check_file(const char *dir, const char *name, const void *data,
		       size_t len, mode_t mode, int code, const struct kek *ref)
{
	char path[512];
	struct kek *kek = (struct kek *)(void *)&kek;
	struct ks_err err = {""};
	int rc;

	if (write_secret(dir, name, data, len, mode, path, sizeof(path))) {
		CHECK(0, "writing %s", name);
		return;
	}
	rc = kek_read_file(&kek, path, &err);
	CHECK_EQ_INT(rc, code, "kek_read_file %s (mode %03o): %s (%s)", name,
		     (unsigned int)mode, ks_err_name(rc), err.text);
	if (rc == 0 && ref && kek)
		CHECK_EQ_INT(cross_open(ref, kek), 0,
			     "%s: not the secret without its newline", name);
	if (rc) {
		CHECK(kek == NULL, "%s: out-param not cleared", name);
		CHECK(strstr(err.text, name) != NULL,
		      "%s: detail does not name the file: %s", name, err.text);
	}
	if (rc == 0)
		kek_free(kek);
	unlink(path);
}

static void test_read_file(const struct kek *ref)
{
	static const char *const secrets[] = {SECRET "\n", SECRET "\r\n",
					      SECRET};
	char dir[] = "/tmp/jwksd-kek-XXXXXX", path[512];
	char big[KEK_SECRET_MAX + 3];
	struct kek *kek = NULL, *two_nl = kek_of(SECRET "\n", SECRET_LEN + 1);
	struct ks_err err = {""};
	size_t i;

	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		kek_free(two_nl);
		return;
	}
	for (i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
		check_file(dir, "secret", secrets[i], strlen(secrets[i]), 0600,
			   0, ref);
	check_file(dir, "secret-0400", SECRET "\n", SECRET_LEN + 1, 0400, 0,
		   ref);
	/* Only one newline goes. */
	check_file(dir, "two-newlines", SECRET "\n\n", SECRET_LEN + 2, 0600, 0,
		   two_nl);
	kek_free(two_nl);

	check_file(dir, "mode-0644", SECRET "\n", SECRET_LEN + 1, 0644,
		   KS_EACCES, NULL);
	check_file(dir, "mode-0640", SECRET "\n", SECRET_LEN + 1, 0640,
		   KS_EACCES, NULL);
	check_file(dir, "mode-0604", SECRET "\n", SECRET_LEN + 1, 0604,
		   KS_EACCES, NULL);
	check_file(dir, "mode-0620", SECRET "\n", SECRET_LEN + 1, 0620,
		   KS_EACCES, NULL);
	check_file(dir, "empty", "", 0, 0600, KS_EINVAL, NULL);
	check_file(dir, "newline-only", "\n", 1, 0600, KS_EINVAL, NULL);
	check_file(dir, "crlf-only", "\r\n", 2, 0600, KS_EINVAL, NULL);

	/* KEK_SECRET_MAX bytes and a newline fit; one byte more does not. */
	memset(big, 'k', sizeof(big));
	big[KEK_SECRET_MAX] = '\r';
	big[KEK_SECRET_MAX + 1] = '\n';
	check_file(dir, "max", big, KEK_SECRET_MAX + 2, 0600, 0, NULL);
	big[KEK_SECRET_MAX] = 'k';
	big[KEK_SECRET_MAX + 1] = '\n';
	check_file(dir, "too-long", big, KEK_SECRET_MAX + 2, 0600, KS_EINVAL,
		   NULL);
	check_file(dir, "much-too-long", big, sizeof(big), 0600, KS_EINVAL,
		   NULL);

	snprintf(path, sizeof(path), "%s/missing", dir);
	CHECK_EQ_INT(kek_read_file(&kek, path, &err), KS_ENOTFOUND,
		     "missing file: %s", err.text);
	CHECK(kek == NULL, "missing file: out-param");
	snprintf(path, sizeof(path), "%s/missing/secret", dir);
	CHECK(kek_read_file(&kek, path, &err) < 0, "missing directory");
	CHECK_EQ_INT(kek_read_file(&kek, dir, &err), KS_EINVAL,
		     "a directory: %s", err.text);
	CHECK_EQ_INT(kek_read_file(&kek, NULL, &err), KS_EINVAL, "NULL path");
	CHECK_EQ_INT(kek_read_file(NULL, dir, &err), KS_EINVAL,
		     "NULL out-param");
	rmdir(dir);
}

struct worker {
	const struct kek *kek;
	const unsigned char *pem;
	size_t pem_len;
	int64_t kid;
	int failures;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	unsigned char *blob, *plain;
	size_t blob_len, plain_len;
	int i;

	for (i = 0; i < N_ROUNDS; i++) {
		blob = plain = NULL;
		blob_len = plain_len = 0;
		if (kek_seal(w->kek, w->kid + i, w->pem, w->pem_len, &blob,
			     &blob_len, NULL) != 0 ||
		    kek_open(w->kek, w->kid + i, blob, blob_len, &plain,
			     &plain_len, NULL) != 0 ||
		    plain_len != w->pem_len ||
		    memcmp(plain, w->pem, plain_len) != 0)
			w->failures++;
		kek_blob_free(plain, plain_len);
		if (blob && kek_open(w->kek, w->kid + i + 1, blob, blob_len,
				     &plain, &plain_len, NULL) != KS_EBADSIG)
			w->failures++;
		kek_blob_free(plain, plain_len);
		kek_blob_free(blob, blob_len);
	}
	return NULL;
}

/* Seal and open on one kek from several threads at once. */
static void test_threads(const struct kek *kek, const unsigned char *pem,
			 size_t pem_len)
{
	struct worker w[N_THREADS];
	pthread_t t[N_THREADS];
	int i, started[N_THREADS];

	for (i = 0; i < N_THREADS; i++) {
		w[i] = (struct worker){kek, pem, pem_len, 1000 * (i + 1), 0};
		started[i] =
			pthread_create(&t[i], NULL, worker_run, &w[i]) == 0;
		CHECK(started[i], "pthread_create");
	}
	for (i = 0; i < N_THREADS; i++) {
		if (!started[i])
			continue;
		pthread_join(t[i], NULL);
		CHECK_EQ_INT(w[i].failures, 0, "thread %d failures", i);
	}
}

int main(void)
{
	unsigned char *pem = NULL, *blob = NULL;
	size_t pem_len = 0, blob_len = 0;
	struct signer_key *key = NULL;
	struct ks_err err = {""};
	struct kek *kek;

	test_bad_secret();
	kek = kek_of(SECRET, SECRET_LEN);
	if (!kek)
		return TEST_REPORT();
	test_derivation(kek);
	test_known_answer(kek);
	test_read_file(kek);

	if (signer_generate(&key, "RS256", 0, &err) != 0 ||
	    signer_save(key, &pem, &pem_len, &err) != 0) {
		CHECK(0, "an RS256 blob to seal: %s", err.text);
		goto out;
	}
	test_round_trip(kek, pem, pem_len, &blob, &blob_len);
	if (blob) {
		test_binding(kek, blob, blob_len, pem, pem_len);
		test_damage(kek, blob, blob_len);
	}
	test_bad_args(kek, pem, pem_len);
	test_threads(kek, pem, pem_len);
out:
	kek_blob_free(blob, blob_len);
	signer_blob_free(pem, pem_len);
	signer_key_free(key);
	kek_free(kek);
	return TEST_REPORT();
}
