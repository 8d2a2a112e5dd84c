/*
 * auth.h: the AUTH user table (auth_users_file).
 *
 * File format: one "user:hash" per line, '#' comments; hash is any crypt(3) hash libcrypt knows,
 * e.g. SHA-512 "$6$salt$..." from `openssl passwd -6` or yescrypt "$y$..." from `mkpasswd`.
 * No plaintext passwords are stored.  Lookups compare in time independent of where a mismatch
 * occurs; an unknown user still costs one hash so user names cannot be probed by timing.
 */
#ifndef RELAY_AUTH_H
#define RELAY_AUTH_H

#include <stddef.h>

#define AUTH_USERS_MAX 10000
#define AUTH_NAME_MAX 255

struct auth_table;

/* Loads the file.  Returns 0 or -1 with a message in err (line number included).  The new
 * table has one hold (the caller's). */
int auth_table_load(const char *path, struct auth_table **out, char *err, size_t errlen);
/* Another hold on t (a check running on the thread pool while a reload replaces the table);
 * returns t.  Holds are taken and dropped on one thread (the loop). */
struct auth_table *auth_table_hold(struct auth_table *t);
/* Drops one hold; the last one frees t (wiping the hashes).  NULL is a no-op. */
void auth_table_free(struct auth_table *t);
size_t auth_table_count(const struct auth_table *t);

/* 1 if user/password match, 0 if not.  Thread-safe (runs on the libuv thread pool). */
int auth_table_check(const struct auth_table *t, const char *user, const char *password);

#endif
