/*
 * File helpers shared by the C test suites: path joining, recursive removal,
 * directory counting, whole-file reads and writes.
 */
#ifndef JWKS_TEST_FS_H
#define JWKS_TEST_FS_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define TEST_PATH_MAX 1024

/* out = a/b; -1 if it does not fit. */
static inline int join(char *out, size_t size, const char *a, const char *b)
{
	int n = snprintf(out, size, "%s/%s", a, b);

	return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* Remove a directory tree (making read-only directories writable first). */
static inline int rm_rf(const char *path)
{
	struct dirent *ent;
	struct stat st;
	DIR *dir;
	int ret = 0;

	if (lstat(path, &st) != 0)
		return errno == ENOENT ? 0 : -1;
	if (!S_ISDIR(st.st_mode))
		return unlink(path);
	chmod(path, 0700);
	dir = opendir(path);
	if (!dir)
		return -1;
	while ((ent = readdir(dir))) {
		char sub[TEST_PATH_MAX];

		if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
			continue;
		if (join(sub, sizeof(sub), path, ent->d_name) || rm_rf(sub))
			ret = -1;
	}
	closedir(dir);
	return rmdir(path) == 0 ? ret : -1;
}

/* The number of entries in a directory, -1 if it cannot be read. */
static inline int count_entries(const char *path)
{
	struct dirent *ent;
	DIR *dir = opendir(path);
	int n = 0;

	if (!dir)
		return -1;
	while ((ent = readdir(dir)))
		if (strcmp(ent->d_name, ".") && strcmp(ent->d_name, ".."))
			n++;
	closedir(dir);
	return n;
}

/* Create or replace a file (mode 0600) with exactly these bytes. */
static inline int write_file(const char *path, const unsigned char *data,
			     size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	int ok;

	if (fd < 0)
		return -1;
	ok = write(fd, data, len) == (ssize_t)len;
	return close(fd) == 0 && ok ? 0 : -1;
}

/* The whole file in a malloc()ed buffer, NULL if it cannot be read. */
static inline unsigned char *read_file(const char *path, size_t *len)
{
	unsigned char *buf = NULL;
	struct stat st;
	int fd = open(path, O_RDONLY);
	ssize_t n = -1;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0 && (buf = malloc((size_t)st.st_size + 1)))
		n = read(fd, buf, (size_t)st.st_size + 1);
	close(fd);
	if (n != (ssize_t)st.st_size) {
		free(buf);
		return NULL;
	}
	*len = (size_t)n;
	return buf;
}

#endif /* JWKS_TEST_FS_H */
