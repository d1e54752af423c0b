/*
 * A minimal test harness: CHECK() records a failure with its location and
 * goes on; TEST_MAIN_END prints "N passed, N failed" and sets the exit code.
 */
#ifndef JWKS_TEST_H
#define JWKS_TEST_H

#include <stdio.h>
#include <string.h>

static int test__passed;
static int test__failed;

#define CHECK(cond, ...)                                              \
	do {                                                          \
		if (cond) {                                           \
			test__passed++;                               \
		} else {                                              \
			test__failed++;                               \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, \
				__LINE__, #cond);                     \
			fprintf(stderr, __VA_ARGS__);                 \
			fputc('\n', stderr);                          \
		}                                                     \
	} while (0)

#define CHECK_EQ_INT(a, b, ...)                                               \
	do {                                                                  \
		long long test__a = (long long)(a), test__b = (long long)(b); \
		CHECK(test__a == test__b, __VA_ARGS__);                       \
		if (test__a != test__b)                                       \
			fprintf(stderr, "    %lld != %lld\n", test__a,        \
				test__b);                                     \
	} while (0)

#define TEST_REPORT()                                                  \
	(printf("%d passed, %d failed\n", test__passed, test__failed), \
	 test__failed ? 1 : 0)

#endif /* JWKS_TEST_H */
