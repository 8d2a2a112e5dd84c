/*
 * test_store.c - the storage interface, run against both backends (RocksDB in a temporary
 * directory, and the in-memory twin) so the twin stays faithful: batches and reads, range
 * deletes, iteration order and seeks, the raft log (append, read, bounds, delete), hard state,
 * applied index, corruption detection, atomic failed writes; plus RocksDB-only persistence
 * across reopen and read-only opens, WAL damage after a crash (a torn last record is
 * dropped, a damaged record before it refuses the open), and obsolete files freed a few MiB at
 * a time (store_rocksdb_trash.h), also after a reopen.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

struct fx {
	char dir[64];
	char db[96];
	int rocks;
	struct store *s;
};

static int
rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static int
setup_rocks(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	strcpy(f->dir, "/tmp/relay-store-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->db, sizeof(f->db), "%s/db", f->dir);
	f->rocks = 1;
	if (store_open(f->db, 0, &f->s))
		return -1;
	*state = f;
	return 0;
}

static int
setup_mem(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (store_mem_new(&f->s))
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;
	store_free(f->s);
	if (f->rocks)
		nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void
put1(struct store *s, enum store_cf cf, const char *k, const char *v)
{
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, cf, k, strlen(k), v, strlen(v)), 0);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
}

static void
put_n(struct store *s, enum store_cf cf, const void *k, size_t kl, const void *v, size_t vl)
{
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, cf, k, kl, v, vl), 0);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
}

static void
expect(struct store *s, enum store_cf cf, const char *k, const char *v)
{
	void *val = NULL;
	size_t vlen = 0;
	int rv = store_get(s, cf, k, strlen(k), &val, &vlen);
	if (!v) {
		assert_int_equal(rv, STORE_ENOTFOUND);
		return;
	}
	assert_int_equal(rv, 0);
	assert_int_equal(vlen, strlen(v));
	assert_memory_equal(val, v, vlen);
	free(val);
}

static void
test_batch_roundtrip(void **state)
{
	struct store *s = ((struct fx *)*state)->s;
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, "a", 1, "1", 1), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, "b", 1, "2", 1), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_QUEUE, "a", 1, "other cf", 8), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, "a", 1, "3", 1), 0); /* later wins */
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, "empty", 5, "", 0), 0);
	assert_int_equal(store_batch_delete(&b, STORE_CF_BODY, "b", 1), 0);
	assert_int_equal(b.count, 6);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
	expect(s, STORE_CF_BODY, "a", "3");
	expect(s, STORE_CF_BODY, "b", NULL);
	expect(s, STORE_CF_BODY, "empty", "");
	expect(s, STORE_CF_QUEUE, "a", "other cf");
	expect(s, STORE_CF_INDEX, "a", NULL);
	/* bounds and bad arguments leave the batch unchanged */
	store_batch_init(&b);
	static char big[STORE_KEY_MAX + 1];
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, big, sizeof(big), "", 0),
			 STORE_ETOOBIG);
	assert_int_equal(store_batch_put(&b, STORE_CF__COUNT, "k", 1, "", 0), STORE_EINVAL);
	assert_int_equal(b.count, 0);
	assert_int_equal(b.len, 0);
	store_batch_fini(&b);
}

static void
test_iter_and_range(void **state)
{
	struct store *s = ((struct fx *)*state)->s;
	const char *keys[] = {"b", "a", "ab", "c", "b\x01", "\xff"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(*keys); i++)
		put1(s, STORE_CF_INDEX, keys[i], keys[i]);
	/* bytewise order, shorter first */
	const char *want[] = {"a", "ab", "b", "b\x01", "c", "\xff"};
	struct store_iter *it;
	assert_int_equal(store_iter_new(s, STORE_CF_INDEX, &it), 0);
	put1(s, STORE_CF_INDEX, "aa", "after the snapshot");
	size_t n = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it), n++) {
		size_t kl, vl;
		const unsigned char *k = store_iter_key(it, &kl);
		const unsigned char *v = store_iter_value(it, &vl);
		assert_true(n < 6);
		assert_int_equal(kl, strlen(want[n]));
		assert_memory_equal(k, want[n], kl);
		assert_memory_equal(v, want[n], vl);
	}
	assert_int_equal(n, 6); /* "aa" came after the snapshot */
	assert_int_equal(store_iter_status(it), 0);
	store_iter_seek(it, "b", 1);
	assert_true(store_iter_valid(it));
	size_t kl;
	assert_memory_equal(store_iter_key(it, &kl), "b", 1);
	store_iter_seek(it, "bb", 2);
	assert_memory_equal(store_iter_key(it, &kl), "c", 1);
	store_iter_seek_last(it);
	assert_memory_equal(store_iter_key(it, &kl), "\xff", 1);
	store_iter_free(it);

	/* delete [ab, c): ab, b, b\x01 go; a, aa, c, \xff stay */
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_delete_range(&b, STORE_CF_INDEX, "ab", 2, "c", 1), 0);
	assert_int_equal(store_write(s, &b, 0), 0);
	store_batch_fini(&b);
	expect(s, STORE_CF_INDEX, "a", "a");
	expect(s, STORE_CF_INDEX, "aa", "after the snapshot");
	expect(s, STORE_CF_INDEX, "ab", NULL);
	expect(s, STORE_CF_INDEX, "b", NULL);
	expect(s, STORE_CF_INDEX, "b\x01", NULL);
	expect(s, STORE_CF_INDEX, "c", "c");
}

static void
append_entries(struct store *s, uint64_t first, uint64_t last)
{
	struct store_batch b;
	store_batch_init(&b);
	for (uint64_t i = first; i <= last; i++) {
		char data[32];
		int n = snprintf(data, sizeof(data), "entry %llu", (unsigned long long)i);
		struct store_entry e = {.index = i,
					.term = i / 10 + 1,
					.type = i % 7 == 0 ? STORE_ENTRY_NOOP : STORE_ENTRY_NORMAL,
					.data = (const unsigned char *)data,
					.len = (size_t)n};
		assert_int_equal(store_log_append(&b, &e), 0);
	}
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
}

static void
check_entry(struct store *s, uint64_t i)
{
	struct store_entry e;
	void *buf;
	assert_int_equal(store_log_get(s, i, &e, &buf), 0);
	char data[32];
	int n = snprintf(data, sizeof(data), "entry %llu", (unsigned long long)i);
	assert_int_equal(e.index, i);
	assert_int_equal(e.term, i / 10 + 1);
	assert_int_equal(e.type, i % 7 == 0 ? STORE_ENTRY_NOOP : STORE_ENTRY_NORMAL);
	assert_int_equal(e.len, n);
	assert_memory_equal(e.data, data, n);
	free(buf);
}

static void
test_log(void **state)
{
	struct store *s = ((struct fx *)*state)->s;
	uint64_t first, last;
	assert_int_equal(store_log_bounds(s, &first, &last), 0);
	assert_int_equal(first, 0);
	assert_int_equal(last, 0);
	append_entries(s, 1, 1000);
	assert_int_equal(store_log_bounds(s, &first, &last), 0);
	assert_int_equal(first, 1);
	assert_int_equal(last, 1000);
	for (uint64_t i = 1; i <= 1000; i += 37)
		check_entry(s, i);
	/* big-endian keys: 256 sorts after 255 (a little-endian key would not) */
	check_entry(s, 255);
	check_entry(s, 256);

	/* a few: point deletes; many: one range delete */
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_log_delete(&b, 1, 10), 0);
	assert_int_equal(b.count, 10);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_clear(&b);
	assert_int_equal(store_log_bounds(s, &first, &last), 0);
	assert_int_equal(first, 11);
	assert_int_equal(store_log_delete(&b, 11, 900), 0);
	assert_int_equal(b.count, 1);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_clear(&b);
	assert_int_equal(store_log_bounds(s, &first, &last), 0);
	assert_int_equal(first, 901);
	assert_int_equal(last, 1000);
	struct store_entry e;
	void *buf;
	assert_int_equal(store_log_get(s, 900, &e, &buf), STORE_ENOTFOUND);
	check_entry(s, 901);
	/* truncate the suffix (what raft does on a conflicting leader) */
	assert_int_equal(store_log_delete(&b, 950, UINT64_MAX), 0);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
	assert_int_equal(store_log_bounds(s, &first, &last), 0);
	assert_int_equal(first, 901);
	assert_int_equal(last, 949);
	/* index 0 is not a log index */
	struct store_batch b2;
	store_batch_init(&b2);
	struct store_entry z = {.index = 0, .term = 1};
	assert_int_equal(store_log_append(&b2, &z), STORE_EINVAL);
	store_batch_fini(&b2);
}

static void
test_log_corruption(void **state)
{
	struct store *s = ((struct fx *)*state)->s;
	append_entries(s, 1, 3);
	unsigned char key[STORE_LOG_KEY_LEN];
	store_log_key(2, key);
	void *val;
	size_t vlen;
	assert_int_equal(store_get(s, STORE_CF_LOG, key, sizeof(key), &val, &vlen), 0);
	struct store_entry e;
	assert_int_equal(store_entry_decode(key, sizeof(key), val, vlen, &e), 0);
	/* every single-byte change of the value is detected */
	for (size_t i = 0; i < vlen; i++) {
		unsigned char *v = val;
		v[i] ^= 0x01;
		assert_int_equal(store_entry_decode(key, sizeof(key), val, vlen, &e),
				 STORE_ECORRUPT);
		v[i] ^= 0x01;
	}
	/* truncated values, wrong key sizes */
	for (size_t n = 0; n < vlen; n++)
		if (n < 14) /* shorter than the header */
			assert_int_equal(store_entry_decode(key, sizeof(key), val, n, &e),
					 STORE_ECORRUPT);
	assert_int_equal(store_entry_decode(key, 7, val, vlen, &e), STORE_ECORRUPT);
	free(val);
	/* a damaged value in the store */
	put_n(s, STORE_CF_LOG, "\0\0\0\0\0\0\0\x02", 8, "garbage", 7);
	void *buf;
	assert_int_equal(store_log_get(s, 2, &e, &buf), STORE_ECORRUPT);
}

static void
test_meta(void **state)
{
	struct store *s = ((struct fx *)*state)->s;
	struct store_hardstate hs;
	assert_int_equal(store_hardstate_get(s, &hs), STORE_ENOTFOUND);
	uint64_t applied = 99;
	assert_int_equal(store_applied_get(s, &applied), 0);
	assert_int_equal(applied, 0);
	struct store_batch b;
	store_batch_init(&b);
	memset(&hs, 0, sizeof(hs));
	hs.term = 0x0102030405060708ull;
	strcpy(hs.vote, "node-7");
	assert_int_equal(store_hardstate_put(&b, &hs), 0);
	assert_int_equal(store_applied_put(&b, 12345678901ull), 0);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
	struct store_hardstate got;
	assert_int_equal(store_hardstate_get(s, &got), 0);
	assert_int_equal(got.term, hs.term);
	assert_string_equal(got.vote, "node-7");
	assert_int_equal(store_applied_get(s, &applied), 0);
	assert_int_equal(applied, 12345678901ull);
	/* damaged meta values */
	put1(s, STORE_CF_META, STORE_META_APPLIED, "xx");
	assert_int_equal(store_applied_get(s, &applied), STORE_ECORRUPT);
	/* vote length 9, but only 2 bytes of vote */
	put_n(s, STORE_CF_META, STORE_META_HARDSTATE, strlen(STORE_META_HARDSTATE),
	      "\x01\0\0\0\0\0\0\0\x01\x09"
	      "ab",
	      12);
	assert_int_equal(store_hardstate_get(s, &got), STORE_ECORRUPT);
}

static void
test_failed_write_is_atomic(void **state)
{
	struct store *s = ((struct fx *)*state)->s;
	put1(s, STORE_CF_BODY, "keep", "old");
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, "keep", 4, "new", 3), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, "other", 5, "x", 1), 0);
	store_inject_write_failures(s, 2);
	assert_int_equal(store_write(s, &b, 1), STORE_EIO);
	assert_int_equal(store_write(s, &b, 0), STORE_EIO);
	expect(s, STORE_CF_BODY, "keep", "old");
	expect(s, STORE_CF_BODY, "other", NULL);
	assert_int_equal(store_write(s, &b, 1), 0);
	expect(s, STORE_CF_BODY, "keep", "new");
	/* batch walking and append */
	struct store_batch c;
	store_batch_init(&c);
	assert_int_equal(store_batch_append(&c, &b), 0);
	assert_int_equal(store_batch_append(&c, &b), 0);
	assert_int_equal(c.count, 4);
	size_t pos = 0, n = 0;
	enum store_op op;
	enum store_cf cf;
	const unsigned char *k, *v;
	size_t kl, vl;
	int rv;
	while ((rv = store_batch_next(&c, &pos, &op, &cf, &k, &kl, &v, &vl)) == 1) {
		assert_int_equal(op, STORE_OP_PUT);
		assert_int_equal(cf, STORE_CF_BODY);
		n++;
	}
	assert_int_equal(rv, 0);
	assert_int_equal(n, 4);
	/* a damaged batch is refused whole */
	c.len -= 1;
	assert_int_equal(store_write(s, &c, 1), STORE_ECORRUPT);
	store_batch_fini(&c);
	store_batch_fini(&b);
	assert_string_equal(store_strerror(STORE_ECORRUPT), "corrupt value in the store");
	assert_string_equal(store_cf_name(STORE_CF_LOG), "raft_log");
}

/* RocksDB only: everything survives close/reopen; read-only opens read but do not write. */
static void
test_persistence(void **state)
{
	struct fx *f = *state;
	append_entries(f->s, 1, 20);
	put1(f->s, STORE_CF_BODY, "q1", "body one");
	put1(f->s, STORE_CF_QUEUE, "q1", "record one");
	store_free(f->s);
	f->s = NULL;
	struct store *ro;
	assert_int_equal(store_open(f->db, 1, &ro), 0);
	expect(ro, STORE_CF_BODY, "q1", "body one");
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_BODY, "x", 1, "y", 1), 0);
	assert_int_not_equal(store_write(ro, &b, 1), 0);
	store_batch_fini(&b);
	store_free(ro);
	assert_int_equal(store_open(f->db, 0, &f->s), 0);
	expect(f->s, STORE_CF_QUEUE, "q1", "record one");
	check_entry(f->s, 20);
	uint64_t first, last;
	assert_int_equal(store_log_bounds(f->s, &first, &last), 0);
	assert_int_equal(last, 20);
	/* a second writer on the same directory is refused (RocksDB's lock), not corrupting */
	struct store *two;
	assert_int_equal(store_open(f->db, 0, &two), STORE_EIO);
}

/* ---- WAL damage (RocksDB only) ----
 *
 * A crash image: the files of an open store, copied while it runs, are what a SIGKILL (or a
 * power cut after the last fsync) leaves behind.  Each record is a synced write, so every one of
 * them was acknowledged; only the last may be torn by a crash (it was being written).
 */

#define WAL_RECORDS 20

static void
wal_value(int i, char *buf, size_t len)
{
	snprintf(buf, len, "term=%04d vote=n%d ", i, i % 3);
	size_t n = strlen(buf);
	memset(buf + n, 'a' + i % 26, len - n - 1); /* long enough to be found in the WAL */
	buf[len - 1] = '\0';
}

/* Writes WAL_RECORDS synced meta records into a store at db and leaves a crash image of it in
 * copy (the store is still open while the files are copied). */
static void
wal_crash_image(const char *db, const char *copy)
{
	struct store *s;
	assert_int_equal(store_open(db, 0, &s), 0);
	for (int i = 0; i < WAL_RECORDS; i++) {
		char k[16], v[200];
		snprintf(k, sizeof(k), "hs%02d", i);
		wal_value(i, v, sizeof(v));
		put1(s, STORE_CF_META, k, v);
	}
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s'", db, copy);
	assert_int_equal(system(cmd), 0);
	store_free(s);
}

/* The newest WAL (NNNNNN.log) of the store at db, into path. */
static void
wal_path(const char *db, char *path, size_t len)
{
	DIR *d = opendir(db);
	assert_non_null(d);
	struct dirent *e;
	char best[64] = "";
	while ((e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		if (n > 4 && strcmp(e->d_name + n - 4, ".log") == 0 &&
		    strcmp(e->d_name, best) > 0 && n < sizeof(best))
			strcpy(best, e->d_name);
	}
	closedir(d);
	assert_true(best[0] != '\0');
	snprintf(path, len, "%s/%s", db, best);
}

/* The WAL's bytes and their offset of record i's value. */
static size_t
wal_find(const char *wal, int i, off_t *size)
{
	int fd = open(wal, O_RDONLY);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	char *buf = malloc((size_t)st.st_size);
	assert_int_equal(read(fd, buf, (size_t)st.st_size), st.st_size);
	close(fd);
	char v[200];
	wal_value(i, v, sizeof(v));
	char *at = memmem(buf, (size_t)st.st_size, v, strlen(v));
	assert_non_null(at);
	size_t off = (size_t)(at - buf);
	free(buf);
	*size = st.st_size;
	return off;
}

/* A record in the middle of the WAL is damaged: later synced records (term, vote) would be
 * lost silently, so the store refuses to open (RocksDB's default recovers up to the damage). */
static void
test_wal_corrupt_middle_refuses_open(void **state)
{
	struct fx *f = *state;
	char db[160], copy[160], wal[256];
	snprintf(db, sizeof(db), "%s/orig", f->dir);
	snprintf(copy, sizeof(copy), "%s/crash", f->dir);
	wal_crash_image(db, copy);
	wal_path(copy, wal, sizeof(wal));
	off_t size;
	size_t off = wal_find(wal, WAL_RECORDS / 2, &size) + 100;
	assert_true((off_t)off < size / 2 + size / 4 && (off_t)off > size / 4);
	int fd = open(wal, O_RDWR);
	assert_true(fd >= 0);
	unsigned char c;
	assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
	c ^= 0x20;
	assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
	close(fd);
	struct store *s = NULL;
	assert_int_equal(store_open(copy, 0, &s), STORE_EIO);
	assert_null(s);
	/* also read-only (relayd --dump-queue) */
	assert_int_equal(store_open(copy, 1, &s), STORE_EIO);
}

/* The last record torn by a crash (cut short): the store opens with every record before it. */
static void
test_wal_torn_tail_opens(void **state)
{
	struct fx *f = *state;
	char db[160], copy[160], wal[256];
	snprintf(db, sizeof(db), "%s/orig", f->dir);
	snprintf(copy, sizeof(copy), "%s/crash", f->dir);
	wal_crash_image(db, copy);
	wal_path(copy, wal, sizeof(wal));
	off_t size;
	size_t off = wal_find(wal, WAL_RECORDS - 1, &size);
	/* cut in the middle of the last record's value */
	assert_int_equal(truncate(wal, (off_t)off + 50), 0);
	struct store *s;
	assert_int_equal(store_open(copy, 0, &s), 0);
	for (int i = 0; i < WAL_RECORDS; i++) {
		char k[16], v[200];
		snprintf(k, sizeof(k), "hs%02d", i);
		wal_value(i, v, sizeof(v));
		expect(s, STORE_CF_META, k, i < WAL_RECORDS - 1 ? v : NULL);
	}
	store_free(s);
}

/* Digest of the three queue CFs read through a view of s, and checks that a view is frozen. */
static struct store_digest
digest_now(struct store *s)
{
	static const enum store_cf cfs[] = {STORE_CF_QUEUE, STORE_CF_BODY, STORE_CF_INDEX};
	struct store_view *v;
	struct store_digest d;
	assert_int_equal(store_view_new(s, &v), 0);
	assert_int_equal(store_view_digest(v, cfs, 3, &d), 0);
	store_view_free(v);
	return d;
}

/* Views: one point in time across every CF, unchanged by later writes (puts, deletes, range
 * deletes, wipes); reads and iteration through them; the applied index as of the view. */
static void
test_view(void **state)
{
	struct fx *f = *state;
	put1(f->s, STORE_CF_QUEUE, "q1", "record one");
	put1(f->s, STORE_CF_QUEUE, "\x01owner", "ownership state");
	put1(f->s, STORE_CF_BODY, "q1", "body one");
	put1(f->s, STORE_CF_INDEX, "Q00000000q1", "");
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_applied_put(&b, 7), 0);
	assert_int_equal(store_write(f->s, &b, 1), 0);
	store_batch_clear(&b);

	struct store_view *v;
	assert_int_equal(store_view_new(f->s, &v), 0);
	/* later writes: a new key, a changed value, a wipe of the index, a new applied index */
	put1(f->s, STORE_CF_QUEUE, "q2", "record two");
	put1(f->s, STORE_CF_BODY, "q1", "changed");
	assert_int_equal(store_batch_wipe_cf(&b, STORE_CF_INDEX), 0);
	assert_int_equal(store_applied_put(&b, 9), 0);
	assert_int_equal(store_write(f->s, &b, 1), 0);
	store_batch_fini(&b);

	uint64_t applied = 0;
	assert_int_equal(store_view_applied_get(v, &applied), 0);
	assert_int_equal(applied, 7);
	assert_int_equal(store_applied_get(f->s, &applied), 0);
	assert_int_equal(applied, 9);
	void *val;
	size_t vlen;
	assert_int_equal(store_view_get(v, STORE_CF_BODY, "q1", 2, &val, &vlen), 0);
	assert_int_equal(vlen, 8);
	assert_memory_equal(val, "body one", 8);
	free(val);
	assert_int_equal(store_view_get(v, STORE_CF_QUEUE, "q2", 2, &val, &vlen), STORE_ENOTFOUND);
	expect(f->s, STORE_CF_INDEX, "Q00000000q1", NULL);

	struct store_iter *it;
	assert_int_equal(store_view_iter_new(v, STORE_CF_QUEUE, &it), 0);
	const char *want[] = {"\x01owner", "q1"};
	size_t n = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it), n++) {
		size_t kl;
		const unsigned char *k = store_iter_key(it, &kl);
		assert_true(n < 2);
		assert_int_equal(kl, strlen(want[n]));
		assert_memory_equal(k, want[n], kl);
	}
	assert_int_equal(n, 2);
	assert_int_equal(store_iter_status(it), 0);
	store_iter_free(it);
	assert_int_equal(store_view_iter_new(v, STORE_CF_INDEX, &it), 0);
	store_iter_seek(it, NULL, 0);
	assert_true(store_iter_valid(it)); /* wiped after the view was taken: still there */
	store_iter_free(it);

	/* the digest of the view: the same as one computed by hand over the same key/values */
	static const enum store_cf cfs[] = {STORE_CF_QUEUE, STORE_CF_BODY, STORE_CF_INDEX};
	struct store_digest d, m;
	assert_int_equal(store_view_digest(v, cfs, 3, &d), 0);
	store_digest_init(&m);
	store_digest_kv(&m, STORE_CF_QUEUE, "\x01owner", 6, 15);
	store_digest_data(&m, "ownership ", 10); /* a value in pieces digests like one piece */
	store_digest_data(&m, "state", 5);
	store_digest_kv(&m, STORE_CF_QUEUE, "q1", 2, 10);
	store_digest_data(&m, "record one", 10);
	store_digest_kv(&m, STORE_CF_BODY, "q1", 2, 8);
	store_digest_data(&m, "body one", 8);
	store_digest_kv(&m, STORE_CF_INDEX, "Q00000000q1", 11, 0);
	assert_int_equal(d.keys, 4);
	assert_int_equal(d.bytes, m.bytes);
	assert_int_equal(d.crc, m.crc);
	store_view_free(v);
	/* the store now differs: so does its digest */
	struct store_digest now = digest_now(f->s);
	assert_int_equal(now.keys, 4); /* q1, q2, \x01owner; body q1; no index key */
	assert_int_not_equal(now.crc, d.crc);
}

/* store_batch_wipe_cf removes every key of one CF, even the largest possible one, and no other
 * CF's keys. */
static void
test_wipe_cf(void **state)
{
	struct fx *f = *state;
	unsigned char big[STORE_KEY_MAX];
	memset(big, 0xff, sizeof(big));
	put_n(f->s, STORE_CF_QUEUE, big, sizeof(big), "v", 1);
	put_n(f->s, STORE_CF_QUEUE, "\0", 1, "v", 1);
	put1(f->s, STORE_CF_QUEUE, "q1", "r");
	put1(f->s, STORE_CF_BODY, "q1", "b");
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_wipe_cf(&b, STORE_CF_QUEUE), 0);
	assert_int_equal(store_write(f->s, &b, 1), 0);
	store_batch_fini(&b);
	struct store_iter *it;
	assert_int_equal(store_iter_new(f->s, STORE_CF_QUEUE, &it), 0);
	store_iter_seek(it, NULL, 0);
	assert_false(store_iter_valid(it));
	store_iter_free(it);
	expect(f->s, STORE_CF_BODY, "q1", "b");
	struct store_digest d = digest_now(f->s);
	assert_int_equal(d.keys, 1);
}

/* Random puts, deletes and range deletes (often at either end: the in-memory store moves the
 * shorter side of its array, and keeps room at both ends) against a model, checked by a full
 * iteration and by gets after every batch. */
#define RND_KEYS 512
static void
test_random_ops_match_model(void **state)
{
	struct fx *f = *state;
	static int present[RND_KEYS];
	static unsigned val[RND_KEYS];
	memset(present, 0, sizeof(present));
	uint64_t x = 88172645463325252ull;
#define RND() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
	char k[16], k2[16], v[16];
	for (unsigned round = 0; round < 400; round++) {
		struct store_batch b;
		store_batch_init(&b);
		unsigned nops = 1 + (unsigned)(RND() % 24);
		for (unsigned op = 0; op < nops; op++) {
			unsigned lo = 0, hi = RND_KEYS - 1, key;
			while (lo < RND_KEYS && !present[lo])
				lo++;
			while (hi > 0 && !present[hi])
				hi--;
			switch (RND() %
				4) { /* where: the low end, the high end, just outside, anywhere */
			case 0:
				key = lo < RND_KEYS ? lo : 0;
				break;
			case 1:
				key = hi;
				break;
			case 2:
				key = RND() % 2 ? (lo > 0 && lo < RND_KEYS ? lo - 1 : 0)
						: (hi + 1 < RND_KEYS ? hi + 1 : hi);
				break;
			default:
				key = (unsigned)(RND() % RND_KEYS);
				break;
			}
			snprintf(k, sizeof(k), "r%04u", key);
			unsigned what = (unsigned)(RND() % 10);
			if (what < 6) {
				val[key] = (unsigned)RND();
				snprintf(v, sizeof(v), "%u", val[key]);
				assert_int_equal(
				    store_batch_put(&b, STORE_CF_QUEUE, k, 5, v, strlen(v)), 0);
				present[key] = 1;
			} else if (what < 9) {
				assert_int_equal(store_batch_delete(&b, STORE_CF_QUEUE, k, 5), 0);
				present[key] = 0;
			} else {
				unsigned end = key + 1 + (unsigned)(RND() % 40);
				if (end > RND_KEYS)
					end = RND_KEYS;
				snprintf(k2, sizeof(k2), "r%04u", end);
				assert_int_equal(
				    store_batch_delete_range(&b, STORE_CF_QUEUE, k, 5, k2, 5), 0);
				for (unsigned i = key; i < end; i++)
					present[i] = 0;
			}
		}
		assert_int_equal(store_write(f->s, &b, STORE_WRITE_WAL), 0);
		store_batch_fini(&b);
		/* the whole column family, in order */
		struct store_iter *it;
		assert_int_equal(store_iter_new(f->s, STORE_CF_QUEUE, &it), 0);
		store_iter_seek(it, "", 0);
		for (unsigned i = 0; i < RND_KEYS; i++) {
			if (!present[i])
				continue;
			assert_true(store_iter_valid(it));
			size_t kl, vl;
			const unsigned char *ik = store_iter_key(it, &kl);
			snprintf(k, sizeof(k), "r%04u", i);
			assert_int_equal(kl, 5);
			assert_memory_equal(ik, k, 5);
			const unsigned char *iv = store_iter_value(it, &vl);
			snprintf(v, sizeof(v), "%u", val[i]);
			assert_int_equal(vl, strlen(v));
			assert_memory_equal(iv, v, vl);
			store_iter_next(it);
		}
		assert_false(store_iter_valid(it));
		assert_int_equal(store_iter_status(it), 0);
		store_iter_free(it);
		for (unsigned j = 0; j < 8; j++) {
			unsigned key = (unsigned)(RND() % RND_KEYS);
			snprintf(k, sizeof(k), "r%04u", key);
			snprintf(v, sizeof(v), "%u", val[key]);
			expect(f->s, STORE_CF_QUEUE, k, present[key] ? v : NULL);
		}
	}
#undef RND
}

/* The largest NAME.trash file in dir and its size; 0 when there is none. */
static off_t
largest_trash(const char *dir, char *name, size_t len)
{
	off_t best = 0;
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);
		if (n < 6 || strcmp(e->d_name + n - 6, ".trash") != 0)
			continue;
		char p[256];
		struct stat st;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		if (stat(p, &st) == 0 && st.st_size >= best) {
			best = st.st_size > 0 ? st.st_size : 1;
			snprintf(name, len, "%s", e->d_name);
		}
	}
	closedir(d);
	return best;
}

static int64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Synced 1 MiB writes until RocksDB makes a file of over 8 MiB obsolete (a WAL, once the
 * memtables it fed are flushed): it must show up as NAME.trash rather than vanish.  Returns its
 * size; name gets its name. */
static off_t
write_until_trash(struct store *s, const char *db, char *name, size_t len)
{
	static unsigned char v[1 << 20];
	memset(v, 'b', sizeof(v));
	for (unsigned i = 0; i < 160; i++) {
		char k[16];
		snprintf(k, sizeof(k), "big%05u", i);
		put_n(s, STORE_CF_QUEUE, k, strlen(k), (const char *)v, sizeof(v));
		off_t t = largest_trash(db, name, len);
		if (t > (8 << 20))
			return t;
	}
	fail_msg("160 MiB written and no obsolete file over 8 MiB went to the trash");
	return 0;
}

/* Obsolete files are freed from the end, a few MiB at a time, not in one unlink (the freeing
 * of tens of MiB at once held a shared disk long enough to delay other synced writes, issue 14
 * part 6): a big trash file is seen at two sizes at least, then gone; the data is intact. */
static void
test_obsolete_files_freed_gradually(void **state)
{
	struct fx *f = *state;
	char name[128];
	off_t first = write_until_trash(f->s, f->db, name, sizeof(name));
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", f->db, name);
	off_t smallest = first;
	int64_t deadline = now_ms() + 10000;
	struct stat st;
	while (stat(path, &st) == 0 && now_ms() < deadline) {
		if (st.st_size < smallest)
			smallest = st.st_size;
		usleep(1000);
	}
	assert_int_not_equal(stat(path, &st), 0); /* freed within the deadline */
	assert_true(smallest < first);		  /* and seen shrinking first */
	while (largest_trash(f->db, name, sizeof(name)) && now_ms() < deadline)
		usleep(10000);
	assert_int_equal(largest_trash(f->db, name, sizeof(name)), 0);
	static unsigned char v[1 << 20];
	memset(v, 'b', sizeof(v));
	void *got;
	size_t gl;
	assert_int_equal(store_get(f->s, STORE_CF_QUEUE, "big00000", 8, &got, &gl), 0);
	assert_int_equal(gl, sizeof(v));
	assert_memory_equal(got, v, gl);
	free(got);
}

/* Trash that a stop left behind is freed after the next open. */
static void
test_trash_left_by_a_stop_is_freed(void **state)
{
	struct fx *f = *state;
	char name[128];
	write_until_trash(f->s, f->db, name, sizeof(name));
	store_free(f->s);
	f->s = NULL;
	/* the close's own flush may add to it; whatever is left is on disk with no one freeing it
	 */
	assert_true(largest_trash(f->db, name, sizeof(name)) > 0);
	assert_int_equal(store_open(f->db, 0, &f->s), 0);
	int64_t deadline = now_ms() + 10000;
	while (largest_trash(f->db, name, sizeof(name)) && now_ms() < deadline)
		usleep(10000);
	assert_int_equal(largest_trash(f->db, name, sizeof(name)), 0);
}

int
main(void)
{
#define BOTH(t)                                                                                    \
	cmocka_unit_test_setup_teardown(t, setup_rocks, teardown),                                 \
	    cmocka_unit_test_setup_teardown(t, setup_mem, teardown)
	const struct CMUnitTest tests[] = {
	    BOTH(test_batch_roundtrip),
	    BOTH(test_iter_and_range),
	    BOTH(test_log),
	    BOTH(test_log_corruption),
	    BOTH(test_meta),
	    BOTH(test_failed_write_is_atomic),
	    BOTH(test_view),
	    BOTH(test_wipe_cf),
	    BOTH(test_random_ops_match_model),
	    cmocka_unit_test_setup_teardown(test_persistence, setup_rocks, teardown),
	    cmocka_unit_test_setup_teardown(test_wal_corrupt_middle_refuses_open, setup_rocks,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_wal_torn_tail_opens, setup_rocks, teardown),
	    cmocka_unit_test_setup_teardown(test_obsolete_files_freed_gradually, setup_rocks,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_trash_left_by_a_stop_is_freed, setup_rocks,
					    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
