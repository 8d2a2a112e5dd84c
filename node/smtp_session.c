/* smtp_session.c: see smtp_session.h.  (stub, the machine is being written) */
#include <errno.h>
#include <stdlib.h>

#include "smtp_session.h"

struct smtp_session {
	const struct smtp_session_config *cfg;
	struct smtp_session_client client;
};

int
smtp_session_new(struct smtp_session **out, const struct smtp_session_config *cfg,
		 const struct smtp_session_client *client)
{
	struct smtp_session *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->cfg = cfg;
	s->client = *client;
	*out = s;
	return 0;
}

void
smtp_session_free(struct smtp_session *s)
{
	free(s);
}

size_t
smtp_session_feed(struct smtp_session *s, const char *buf, size_t len)
{
	return 0;
}

void
smtp_session_output(const struct smtp_session *s, const char **buf, size_t *len)
{
	*buf = "";
	*len = 0;
}

void
smtp_session_output_consume(struct smtp_session *s, size_t n)
{
}

enum smtp_event_type
smtp_session_event(const struct smtp_session *s, struct smtp_event *ev)
{
	ev->type = SMTP_EV_NONE;
	return SMTP_EV_NONE;
}

int
smtp_session_tls_done(struct smtp_session *s, int ok)
{
	return -EINVAL;
}

int
smtp_session_auth_result(struct smtp_session *s, int ok)
{
	return -EINVAL;
}

int
smtp_session_message_result(struct smtp_session *s, int code, const char *enhanced,
			    const char *text)
{
	return -EINVAL;
}

void
smtp_session_timeout(struct smtp_session *s)
{
}

void
smtp_session_shutdown(struct smtp_session *s)
{
}

bool
smtp_session_in_data(const struct smtp_session *s)
{
	return false;
}

const char *
smtp_session_state_name(const struct smtp_session *s)
{
	return "stub";
}

int
smtp_received_header(char *buf, size_t cap, const struct smtp_received_info *ri)
{
	return -ENOSPC;
}
