/*
 * Reading the files crypto/ keeps secrets in (the key-encryption secret,
 * TLS keys) and the certificates beside them: see crypto__read_file().
 */
#include "crypto_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* The project code for a failed open(2). */
static int crypto_errno_code(int e)
{
	switch (e) {
	case ENOENT:
	case ENOTDIR:
		return KS_ENOTFOUND;
	case EACCES:
	case EPERM:
		return KS_EACCES;
	default:
		return KS_EIO;
	}
}

int crypto__read_file(const char *path, const char *what, int private,
		      size_t max, char **out, size_t *len_out,
		      struct ks_err *err)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	ssize_t n;
	int fd, rc, e;

	*out = NULL;
	*len_out = 0;
	/* O_NONBLOCK: a FIFO put in the file's place must not hang us. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		e = errno;
		return ks_err_set(err, crypto_errno_code(e), "open %s '%s': %s",
				  what, path, strerror(e));
	}
	if (fstat(fd, &st) != 0) {
		e = errno;
		rc = ks_err_set(err, KS_EIO, "fstat %s '%s': %s", what, path,
				strerror(e));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = ks_err_set(err, KS_EINVAL, "%s '%s' is not a regular file",
				what, path);
		goto out;
	}
	if (private && (st.st_mode & 077)) {
		rc = ks_err_set(err, KS_EACCES,
				"%s '%s' is open to group or others (mode "
				"%03o); chmod 600 it",
				what, path, (unsigned int)(st.st_mode & 0777));
		goto out;
	}
	if ((unsigned long long)st.st_size > max) {
		rc = ks_err_set(err, KS_EINVAL,
				"%s '%s' is larger than %zu bytes", what, path,
				max);
		goto out;
	}
	cap = (size_t)st.st_size + 1;
	buf = OPENSSL_malloc(cap);
	if (!buf) {
		rc = ks_err_set(err, KS_ENOMEM, "reading %s '%s'", what, path);
		goto out;
	}
	/* What fstat() saw; a file that grew since is read that far. */
	while (len < cap - 1) {
		n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			e = errno;
			rc = ks_err_set(err, KS_EIO, "read %s '%s': %s", what,
					path, strerror(e));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*out = buf;
	*len_out = len;
	buf = NULL;
	rc = 0;
out:
	OPENSSL_clear_free(buf, cap);
	close(fd);
	return rc;
}
