/* smtp_addr.c: see smtp_addr.h.  (stub, being written) */
#include "smtp_addr.h"
#include "smtp_session.h"

int
smtp__parse_path(const char *p, size_t len, unsigned flags, char *out, size_t cap,
		 int *domain_off, size_t *consumed)
{
	return SMTP__ADDR_SYNTAX;
}

bool
smtp__xtext_valid(const char *p, size_t len, size_t max)
{
	return false;
}

bool
smtp__utf8_valid(const char *p, size_t len)
{
	return false;
}
