/*
 * queue_validate.c - validation of a command before it is applied (queue_fsm_int.h):
 * every string, index and enum of a peer-supplied command is checked here, so apply never
 * meets a malformed one (G6).
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

/* ---- validation ---- */

/* printable ASCII, no space, no quote or backslash: safe in logs, keys and JSON */
int
queue__token_ok(const char *s, size_t n, size_t max)
{
	if (n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
			return 0;
	}
	return 1;
}

int
queue__id_ok(const char *id)
{
	return id && queue__token_ok(id, strnlen(id, QUEUE_ID_MAX + 1), QUEUE_ID_MAX);
}

static int
queue__node_ok(const char *node)
{
	return node && queue__token_ok(node, strnlen(node, QUEUE_NODE_MAX + 1), QUEUE_NODE_MAX);
}

static int
queue__addr_ok(const char *a, int may_be_empty)
{
	if (!a)
		return 0;
	size_t n = strnlen(a, QUEUE_ADDR_MAX + 1);
	return n <= QUEUE_ADDR_MAX && (n > 0 || may_be_empty);
}

static int
queue__quota_name_ok(const char *s)
{
	if (!s)
		return 0;
	size_t n = strnlen(s, QUEUE_QUOTA_NAME_MAX + 1);
	if (n == 0 || n > QUEUE_QUOTA_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

static int
queue__accept_ok(const Relay__Accept *a)
{
	if (!a || !queue__id_ok(a->queue_id) || !queue__addr_ok(a->mail_from, 1))
		return 0;
	if (a->n_rcpts == 0 || a->n_rcpts > QUEUE_RCPTS_MAX)
		return 0;
	for (size_t i = 0; i < a->n_rcpts; i++)
		if (!a->rcpts[i] || !queue__addr_ok(a->rcpts[i]->addr, 0))
			return 0;
	if (a->body.len > QUEUE_BODY_MAX || (a->body.len && !a->body.data))
		return 0;
	/* quotas: a counted name is 1..QUEUE_QUOTA_NAME_MAX bytes without control characters */
	if (a->has_quota_user && a->quota_user && !queue__quota_name_ok(a->auth_user))
		return 0;
	if (a->has_quota_client && a->quota_client && !queue__quota_name_ok(a->client_key))
		return 0;
	return 1;
}

/* Optional one-line text: absent, or at most max bytes with no CR, LF (or other C0 control but
 * TAB) and no DEL: safe in a log line and in the record. */
static int
queue__line_ok(const char *s, size_t max)
{
	if (!s)
		return 1;
	size_t n = strnlen(s, max + 1);
	if (n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return 0;
	}
	return 1;
}

static int
queue__dsn_status_ok(const char *s)
{
	if (!s)
		return 1;
	size_t n = strnlen(s, QUEUE_DSN_STATUS_MAX + 1);
	if (n > QUEUE_DSN_STATUS_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '.' || (s[i] >= '0' && s[i] <= '9')))
			return 0;
	return 1;
}

/* Recipient indexes: each < QUEUE_RCPTS_MAX, no repeats (a repeat would count an attempt
 * twice).  The bound against the message's recipients is checked at apply. */
static int
queue__indexes_ok(const uint32_t *idx, size_t n, int may_be_empty)
{
	if ((n == 0 && !may_be_empty) || n > QUEUE_RCPTS_MAX || (n && !idx))
		return 0;
	unsigned char seen[(QUEUE_RCPTS_MAX + 7) / 8] = {0};
	for (size_t i = 0; i < n; i++) {
		uint32_t k = idx[i];
		if (k >= QUEUE_RCPTS_MAX || (seen[k / 8] & (1u << (k % 8))))
			return 0;
		seen[k / 8] |= (unsigned char)(1u << (k % 8));
	}
	return 1;
}

static int
queue__outcome_ok(const Relay__Outcome *o)
{
	if (!o || !queue__id_ok(o->queue_id) ||
	    !queue__indexes_ok(o->rcpt_index, o->n_rcpt_index, 0))
		return 0;
	switch (o->kind) {
	case RELAY__OUTCOME_KIND__DELIVERED:
	case RELAY__OUTCOME_KIND__FAILED:
		break;
	case RELAY__OUTCOME_KIND__DEFERRED:
		if (!o->has_next_attempt_ms)
			return 0;
		break;
	default:
		return 0;
	}
	if (!queue__line_ok(o->reply, QUEUE_REPLY_MAX) ||
	    !queue__line_ok(o->relay, QUEUE_RELAY_MAX) || !queue__dsn_status_ok(o->dsn_status))
		return 0;
	if (o->dsn) {
		/* a DSN comes from the null reverse-path (RFC 3464 2., RFC 5321 4.5.5: no DSN
		 * about a DSN) and is another message */
		if (!queue__accept_ok(o->dsn) || o->dsn->mail_from[0] != 0 ||
		    !strcmp(o->dsn->queue_id, o->queue_id))
			return 0;
	}
	return 1;
}

/* A domain as ownership names it: at most QUEUE_DOMAIN_MAX bytes, no control characters. */
static int
queue__defer_ok(const Relay__DeferDomain *dd)
{
	return dd && dd->domain && queue__line_ok(dd->domain, QUEUE_DOMAIN_MAX) &&
	       !strchr(dd->domain, '\t') && dd->epoch && dd->until_ms &&
	       queue__line_ok(dd->reply, QUEUE_REPLY_MAX);
}

int
queue_validate(const Relay__Command *cmd)
{
	if (!cmd)
		return QUEUE_EINVAL;
	switch (cmd->cmd_case) {
	case RELAY__COMMAND__CMD_ACCEPT:
		return queue__accept_ok(cmd->accept) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_OUTCOME:
		return queue__outcome_ok(cmd->outcome) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_DELETE:
		if (!cmd->delete_ || !queue__id_ok(cmd->delete_->queue_id) ||
		    !queue__indexes_ok(cmd->delete_->rcpt_index, cmd->delete_->n_rcpt_index, 1))
			return QUEUE_EINVAL;
		return 0;
	case RELAY__COMMAND__CMD_MEMBER:
		if (!cmd->member || !queue__node_ok(cmd->member->node))
			return QUEUE_EINVAL;
		switch (cmd->member->state) {
		case RELAY__MEMBER_STATE__MEMBER_LIVE:
		case RELAY__MEMBER_STATE__MEMBER_DRAINING:
		case RELAY__MEMBER_STATE__MEMBER_DRAINED:
		case RELAY__MEMBER_STATE__MEMBER_DOWN:
		case RELAY__MEMBER_STATE__MEMBER_REMOVED:
			return 0;
		default:
			return QUEUE_EINVAL;
		}
	case RELAY__COMMAND__CMD_RENEW:
		return cmd->renew && queue__node_ok(cmd->renew->node) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_HOLD:
		return cmd->hold && queue__id_ok(cmd->hold->queue_id) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_RELEASE:
		return cmd->release && queue__id_ok(cmd->release->queue_id) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_RETRY:
		return cmd->retry && queue__id_ok(cmd->retry->queue_id) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_DEFER_DOMAIN:
		return queue__defer_ok(cmd->defer_domain) ? 0 : QUEUE_EINVAL;
	default:
		return QUEUE_EINVAL;
	}
}
