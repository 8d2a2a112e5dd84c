/*
 * fuzz_proxy.c: arbitrary bytes into the PROXY header parser, whole and as every prefix the
 * glue could see.  Invariants: the result is -1, 0 or a length within the input and the bounds;
 * a prefix never claims more than the whole input; a successful parse is stable when more bytes
 * follow.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

/* not CHECK(): it vanishes under NDEBUG, and these checks are the point */
#define CHECK(c) do { if (!(c)) abort(); } while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_info a, b;
	int whole = proxy_parse(data, size, &a);
	CHECK(whole >= -1 && whole <= (int)size);
	CHECK(whole <= PROXY_V2_MAX);
	if (whole > 0) {
		CHECK(a.version == 1 || a.version == 2);
		for (size_t cut = 0; cut < (size_t)whole; cut++) {
			int r = proxy_parse(data, cut, &b);
			CHECK(r == 0 || r == -1);
		}
		uint8_t *more = malloc(size + 8);
		if (more != NULL) {
			memcpy(more, data, size);
			memset(more + size, 'X', 8);
			CHECK(proxy_parse(more, size + 8, &b) == whole);
			free(more);
		}
	}
	return 0;
}
