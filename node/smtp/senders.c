/*
 * senders.c: the sender permission table (see senders.h).
 *
 * Parsing builds one entry per pattern (user, pattern), sorts them by user and merges each
 * user's patterns into one record; a lookup is a binary search on the user, then a scan of its
 * patterns.  Nothing here reads a clock; only sender_table_load touches the file system.
 */
#include "senders.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct sender_user {
	char *name;	  /* owned */
	char **patterns;  /* owned, each owned; lowercased; "@dom" or "local@dom" */
	size_t n, cap;
	bool star;	  /* "*": any sender, <> included */
};

struct sender_table {
	struct sender_user *users; /* owned, sorted by name (strcmp) */
	size_t n, cap;
	size_t npatterns;
};

void
sender_table_free(struct sender_table *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->n; i++) {
		for (size_t j = 0; j < t->users[i].n; j++)
			free(t->users[i].patterns[j]);
		free(t->users[i].patterns);
		free(t->users[i].name);
	}
	free(t->users);
	free(t);
}

size_t
sender_table_users(const struct sender_table *t)
{
	return t ? t->n : 0;
}

size_t
sender_table_patterns(const struct sender_table *t)
{
	return t ? t->npatterns : 0;
}

static int
user_cmp(const void *a, const void *b)
{
	return strcmp(((const struct sender_user *)a)->name, ((const struct sender_user *)b)->name);
}

static struct sender_user *
user_find(const struct sender_table *t, const char *name)
{
	struct sender_user key = {.name = (char *)name};
	if (t->n == 0)
		return NULL; /* bsearch wants a non-NULL base */
	return bsearch(&key, t->users, t->n, sizeof(*t->users), user_cmp);
}

/* A user name: printable ASCII or UTF-8, no blank, no ':' or ','. */
static bool
user_ok(const char *s, size_t n)
{
	if (n == 0 || n > SENDERS_USER_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 127 || c == ':' || c == ',')
			return false;
	}
	return true;
}

/* "*", "@domain" or "local@domain": one '@' (the last), a non-empty domain of label
 * characters, no blank or control character. */
static bool
pattern_ok(const char *s, size_t n)
{
	if (n == 1 && s[0] == '*')
		return true;
	if (n == 0 || n > SENDERS_PATTERN_MAX)
		return false;
	const char *at = memrchr(s, '@', n);
	if (at == NULL || at == s + n - 1)
		return false;
	for (const char *p = at + 1; p < s + n; p++) {
		unsigned char c = (unsigned char)*p;
		if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80))
			return false;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 127 || c == ',' || c == '<' || c == '>')
			return false;
	}
	return true;
}

static struct sender_user *
user_get(struct sender_table *t, const char *name, size_t n)
{
	/* one record per line; records of one user are merged after sorting (merge_users) */
	if (t->n == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 16;
		struct sender_user *nu = realloc(t->users, cap * sizeof(*nu));
		if (nu == NULL)
			return NULL;
		t->users = nu;
		t->cap = cap;
	}
	struct sender_user *u = &t->users[t->n];
	memset(u, 0, sizeof(*u));
	u->name = strndup(name, n);
	if (u->name == NULL)
		return NULL;
	t->n++;
	return u;
}

static int
user_add(struct sender_user *u, const char *p, size_t n)
{
	if (n == 1 && p[0] == '*') {
		u->star = true;
		return 0;
	}
	if (u->n == u->cap) {
		size_t cap = u->cap ? 2 * u->cap : 4;
		char **np = realloc(u->patterns, cap * sizeof(*np));
		if (np == NULL)
			return -1;
		u->patterns = np;
		u->cap = cap;
	}
	char *s = strndup(p, n);
	if (s == NULL)
		return -1;
	for (char *q = s; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	u->patterns[u->n++] = s;
	return 0;
}

/* One line (no line end): "user: pattern, ...".  0, or -1 with err set. */
static int
parse_line(struct sender_table *t, const char *s, size_t n, unsigned lineno, char *err,
	   size_t errlen)
{
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		n--;
	while (n > 0 && isspace((unsigned char)*s))
		s++, n--;
	if (n == 0 || s[0] == '#')
		return 0;
	const char *colon = memchr(s, ':', n);
	size_t ulen = colon ? (size_t)(colon - s) : 0;
	while (ulen > 0 && isspace((unsigned char)s[ulen - 1]))
		ulen--;
	if (colon == NULL || !user_ok(s, ulen)) {
		snprintf(err, errlen, "%u: expected 'user: pattern, ...' (a user name without "
				      "blanks, ':' or ',')", lineno);
		return -1;
	}
	struct sender_user *u = user_get(t, s, ulen);
	if (u == NULL)
		goto err_nomem;
	const char *p = colon + 1, *end = s + n;
	size_t count = 0;
	while (p < end) {
		while (p < end && (isspace((unsigned char)*p) || *p == ','))
			p++;
		const char *q = p;
		while (q < end && !isspace((unsigned char)*q) && *q != ',')
			q++;
		if (q == p)
			break;
		if (!pattern_ok(p, (size_t)(q - p))) {
			snprintf(err, errlen, "%u: bad pattern '%.*s' (want an address, @domain or *)",
				 lineno, (int)((q - p) > 80 ? 80 : (q - p)), p);
			return -1;
		}
		if (t->npatterns == SENDERS_PATTERNS_MAX) {
			snprintf(err, errlen, "%u: more than %u patterns", lineno,
				 SENDERS_PATTERNS_MAX);
			return -1;
		}
		if (user_add(u, p, (size_t)(q - p)) != 0)
			goto err_nomem;
		t->npatterns++;
		count++;
		p = q;
	}
	if (count == 0) {
		snprintf(err, errlen, "%u: user '%.*s' has no pattern", lineno, (int)ulen, s);
		return -1;
	}
	return 0;
err_nomem:
	snprintf(err, errlen, "%u: out of memory", lineno);
	return -1;
}

/* Merges adjacent records of one user (sorted by name) into the first of them. */
static int
merge_users(struct sender_table *t)
{
	size_t w = 0;
	for (size_t r = 0; r < t->n; r++) {
		struct sender_user *u = &t->users[r];
		if (w > 0 && strcmp(t->users[w - 1].name, u->name) == 0) {
			struct sender_user *d = &t->users[w - 1];
			if (d->n + u->n > d->cap) {
				char **np = realloc(d->patterns, (d->n + u->n) * sizeof(*np));
				if (np == NULL) {
					/* keep every record once so the caller can free the table */
					memmove(&t->users[w], u, (t->n - r) * sizeof(*u));
					t->n = w + (t->n - r);
					return -1;
				}
				d->patterns = np;
				d->cap = d->n + u->n;
			}
			memcpy(d->patterns + d->n, u->patterns, u->n * sizeof(*u->patterns));
			d->n += u->n;
			d->star |= u->star;
			free(u->patterns);
			free(u->name);
			continue;
		}
		t->users[w++] = *u;
	}
	t->n = w;
	return 0;
}

int
sender_table_parse(const char *text, size_t len, struct sender_table **out, char *err,
		   size_t errlen)
{
	struct sender_table *t = calloc(1, sizeof(*t));
	if (t == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	unsigned lineno = 0;
	for (size_t off = 0; off < len;) {
		const char *nl = memchr(text + off, '\n', len - off);
		size_t n = nl ? (size_t)(nl - (text + off)) : len - off;
		lineno++;
		if (n > SENDERS_LINE_MAX) {
			snprintf(err, errlen, "%u: line longer than %u bytes", lineno,
				 SENDERS_LINE_MAX);
			goto err_after_alloc;
		}
		if (memchr(text + off, '\0', n) != NULL) {
			snprintf(err, errlen, "%u: NUL byte", lineno);
			goto err_after_alloc;
		}
		if (parse_line(t, text + off, n, lineno, err, errlen) != 0)
			goto err_after_alloc;
		off += n + (nl != NULL);
	}
	if (t->n > 1)
		qsort(t->users, t->n, sizeof(*t->users), user_cmp);
	if (merge_users(t) != 0) {
		snprintf(err, errlen, "out of memory");
		goto err_after_alloc;
	}
	*out = t;
	return 0;
err_after_alloc:
	sender_table_free(t);
	return -1;
}

int
sender_table_load(const char *path, struct sender_table **out, char *err, size_t errlen)
{
	char msg[256];
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		snprintf(err, errlen, "sender_permissions_file: %s: %s", path, strerror(errno));
		return -1;
	}
	char *buf = malloc(SENDERS_FILE_MAX + 1);
	if (buf == NULL) {
		fclose(f);
		snprintf(err, errlen, "sender_permissions_file: out of memory");
		return -1;
	}
	size_t len = fread(buf, 1, SENDERS_FILE_MAX + 1, f);
	int rerr = ferror(f);
	fclose(f);
	int rc = -1;
	if (rerr)
		snprintf(err, errlen, "sender_permissions_file: %s: read error", path);
	else if (len > SENDERS_FILE_MAX)
		snprintf(err, errlen, "sender_permissions_file: %s: larger than %u bytes", path,
			 SENDERS_FILE_MAX);
	else if (sender_table_parse(buf, len, out, msg, sizeof(msg)) != 0)
		snprintf(err, errlen, "sender_permissions_file: %s:%s", path, msg);
	else
		rc = 0;
	free(buf);
	return rc;
}

/* Does addr (lowercase compare) match the pattern ("@dom" or a full address)? */
static bool
pattern_match(const char *pat, const char *addr)
{
	if (pat[0] == '@') {
		const char *at = strrchr(addr, '@');
		return at != NULL && at != addr && strcasecmp(at, pat) == 0;
	}
	return strcasecmp(pat, addr) == 0;
}

bool
sender_table_allows(const struct sender_table *t, const char *user, const char *addr)
{
	if (t == NULL || user == NULL)
		return false;
	const struct sender_user *u = user_find(t, user);
	if (u == NULL)
		return false;
	if (u->star)
		return true;
	if (addr[0] == '\0')
		return false; /* <> only with "*" */
	for (size_t i = 0; i < u->n; i++)
		if (pattern_match(u->patterns[i], addr))
			return true;
	return false;
}
