/*
 * senders.h: who may send as whom (sender_permissions_file, issue 13 part 1).
 *
 * File format: one "user: pattern, pattern, ..." per line (blanks or commas between patterns),
 * '#' comments and blank lines ignored.  A pattern is a full address ("alice@example.com"), a
 * domain ("@example.com": any address in that domain, not its subdomains) or "*" (any address,
 * the null reverse-path <> included).  Addresses and domains compare ASCII-case-insensitively
 * (as Postfix's lookup tables do).  A user may appear on several lines; the patterns add up.
 *
 * Policy (sender_table_allows): a user with "*" may send as anyone and as <>; otherwise the
 * reverse-path must match one of the user's patterns, and <> is refused; a user not in the
 * table may send as nobody.  The caller decides who is checked (authenticated clients outside
 * mynetworks: node/smtp/smtp_server.c).
 *
 * Pure: sender_table_parse reads a buffer; sender_table_load reads the file then parses it.
 * Every bound is named below; a file over a bound is an error naming the line, never a
 * truncated table.
 */
#ifndef RELAY_SENDERS_H
#define RELAY_SENDERS_H

#include <stdbool.h>
#include <stddef.h>

#define SENDERS_FILE_MAX (4u << 20)   /* bytes in the file */
#define SENDERS_LINE_MAX 8192u	      /* bytes in one line */
#define SENDERS_PATTERNS_MAX 100000u  /* patterns in the whole file */
#define SENDERS_USER_MAX 255u	      /* bytes in a user name (the AUTH identity, RFC 4616) */
#define SENDERS_PATTERN_MAX 320u      /* bytes in a pattern (RFC 5321 4.5.3.1: 64 + 1 + 255) */

struct sender_table;

/* Parses text (len bytes, need not be NUL-terminated).  0 and *out, or -1 with a message in err
 * ("LINE: what is wrong"; the caller prefixes the file). */
int sender_table_parse(const char *text, size_t len, struct sender_table **out, char *err,
		       size_t errlen);

/* Reads path and parses it.  0 and *out, or -1 with "sender_permissions_file: PATH:LINE: ..." */
int sender_table_load(const char *path, struct sender_table **out, char *err, size_t errlen);

void sender_table_free(struct sender_table *t);

/* Users and patterns loaded (for logs). */
size_t sender_table_users(const struct sender_table *t);
size_t sender_table_patterns(const struct sender_table *t);

/* May user send with reverse-path addr ("" is <>)?  See the policy above. */
bool sender_table_allows(const struct sender_table *t, const char *user, const char *addr);

#endif
