/*
 * Shared by the libFuzzer targets in tests/fuzz: the entry points libFuzzer
 * calls, and FUZZ_CHECK(), which aborts when a property of the code under
 * test does not hold. libFuzzer reports an abort like any other crash and
 * saves the input that caused it.
 */
#ifndef JWKS_FUZZ_H
#define JWKS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
				__LINE__, #cond);                              \
			abort();                                               \
		}                                                              \
	} while (0)

#endif /* JWKS_FUZZ_H */
