/*
 * auth.c: auth_users_file loading and checking with crypt_r(3) from libcrypt.
 */
#include "auth.h"

#include <crypt.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct auth_entry {
	char *user;
	char *hash;
};

struct auth_table {
	unsigned holds; /* auth_table_hold / auth_table_free */
	size_t n;
	struct auth_entry *v;
	char *dummy; /* owned: a hash of the first user's scheme and cost, for unknown users */
};

/* Used only when no user's hash can serve as a model (an empty table). */
static const char auth_dummy_hash[] =
    "$6$invalidsalt$OS/8b0Lm8VQ7wHbPnT.Ke2ou/u7ViJ0a6bKnQy0pX6VZFB6mhfv2ZZ0a3J8NUjt0e7ydRgk0/vbyS9sQhq0xI/";

struct auth_table *
auth_table_hold(struct auth_table *t)
{
	if (t != NULL)
		t->holds++;
	return t;
}

void
auth_table_free(struct auth_table *t)
{
	if (t == NULL || --t->holds > 0)
		return;
	for (size_t i = 0; i < t->n; i++) {
		free(t->v[i].user);
		if (t->v[i].hash != NULL)
			explicit_bzero(t->v[i].hash, strlen(t->v[i].hash));
		free(t->v[i].hash);
	}
	free(t->v);
	free(t->dummy);
	free(t);
}

/*
 * The hash checked for an unknown user: the first entry's setting (scheme, cost, salt) applied
 * to a fixed string, so a check for a user that does not exist costs what a real one costs and
 * timing tells nothing (issue 12 sec. 4).  NULL when crypt refuses the setting.
 */
static char *
auth_dummy_for(const char *model)
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return NULL;
	const char *h = crypt_r("relayd: no such user", model, cd);
	char *dup = h != NULL && h[0] == '$' ? strdup(h) : NULL;
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return dup;
}

size_t
auth_table_count(const struct auth_table *t)
{
	return t ? t->n : 0;
}

int
auth_table_load(const char *path, struct auth_table **out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		snprintf(err, errlen, "auth_users_file: %s: %s", path, strerror(errno));
		return -1;
	}
	struct auth_table *t = calloc(1, sizeof(*t));
	char line[1024];
	unsigned lineno = 0;
	if (t == NULL)
		goto err_nomem;
	t->holds = 1;
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		size_t len = strlen(line);
		while (len > 0 && isspace((unsigned char)line[len - 1]))
			line[--len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		char *colon = strchr(line, ':');
		if (colon == NULL || colon == line || (size_t)(colon - line) > AUTH_NAME_MAX ||
		    colon[1] != '$') {
			snprintf(err, errlen,
				 "auth_users_file: %s:%u: expected user:$id$salt$hash (plaintext "
				 "passwords are not accepted)",
				 path, lineno);
			goto err_after_alloc;
		}
		if (t->n == AUTH_USERS_MAX) {
			snprintf(err, errlen, "auth_users_file: %s: more than %d users", path,
				 AUTH_USERS_MAX);
			goto err_after_alloc;
		}
		*colon = '\0';
		struct auth_entry *nv = realloc(t->v, (t->n + 1) * sizeof(*nv));
		if (nv == NULL)
			goto err_nomem;
		t->v = nv;
		t->v[t->n].user = strdup(line);
		t->v[t->n].hash = strdup(colon + 1);
		t->n++;
		if (t->v[t->n - 1].user == NULL || t->v[t->n - 1].hash == NULL)
			goto err_nomem;
	}
	explicit_bzero(line, sizeof(line));
	fclose(f);
	if (t->n > 0 && (t->dummy = auth_dummy_for(t->v[0].hash)) == NULL) {
		snprintf(err, errlen, "auth_users_file: %s: the hash of user %s: crypt(3) does not "
			 "know its scheme", path, t->v[0].user);
		auth_table_free(t);
		return -1;
	}
	*out = t;
	return 0;
err_nomem:
	snprintf(err, errlen, "auth_users_file: out of memory");
err_after_alloc:
	explicit_bzero(line, sizeof(line));
	auth_table_free(t);
	fclose(f);
	return -1;
}

static int
ct_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = (unsigned char)(la != lb);
	size_t n = la < lb ? la : lb;
	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

int
auth_table_check(const struct auth_table *t, const char *user, const char *password)
{
	const char *hash = t != NULL && t->dummy != NULL ? t->dummy : auth_dummy_hash;
	int known = 0;
	for (size_t i = 0; t != NULL && i < t->n; i++)
		if (strcmp(t->v[i].user, user) == 0) {
			hash = t->v[i].hash;
			known = 1;
			break;
		}
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return 0;
	const char *got = crypt_r(password, hash, cd);
	int ok = known && got != NULL && got[0] != '*' && ct_equal(got, hash);
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return ok;
}
