/*
 * store_rocksdb.c - the RocksDB backend of store.h; the only file including <rocksdb/c.h>.
 *
 * One database, one column family per enum store_cf (plus RocksDB's "default", unused).  A
 * store_batch becomes one rocksdb_writebatch_t written with one rocksdb_write, so it is atomic;
 * sync=1 sets WriteOptions.sync (the WAL is fsynced before the write returns).  The WAL is on, so
 * after a crash RocksDB recovers a prefix of the writes across all column families.
 *
 * WAL recovery: kTolerateCorruptedTailRecords.  A record torn by a crash while it was being
 * written (the tail of the last WAL) is dropped: it was never acknowledged, since a synced write
 * returns only once the whole record is on disk.  A corrupt record anywhere else means synced
 * data (a Raft term or vote, an acknowledged message) would be lost: open fails instead of
 * RocksDB's default (kPointInTimeRecovery), which silently recovers only up to the damage.
 *
 * Test-only knob: with RELAY_TEST_UNSAFE_NO_SYNC=1 in the environment, writes asked to be synced
 * are not (no fsync of the WAL): acknowledged data is NOT durable.  It exists only so that a test
 * (tests/integration/test_durability.py) can show its checker catches a relayd that answers 250
 * before the WAL sync; each open under it says so on stderr.  Never set it anywhere else.
 *
 * Failure modes: open errors (missing permissions, a damaged manifest or WAL, a lock held by
 * another process) and write errors are reported on stderr with RocksDB's text and returned as
 * STORE_EIO; a damaged block surfaces as STORE_EIO from the read or iterator.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <rocksdb/c.h>

#include "store.h"
#include "store_rocksdb_trash.h"

/* See the header comment: test only. */
/* Read-only opens (relayd --dump-queue on a running node) that lose the race with a compaction
 * are tried again this many times, t x this many ms apart. */
#define STORE_RO_OPEN_TRIES 10
#define STORE_RO_OPEN_BACKOFF_MS 50
#define STORE_TEST_UNSAFE_NO_SYNC_ENV "RELAY_TEST_UNSAFE_NO_SYNC"

/* RocksDB's own info log (DATA_DIR/LOG): one file of at most this size, and one older. */
#define STORE__INFO_LOG_MAX ((size_t)4 << 20)
#define STORE__INFO_LOG_KEEP ((size_t)2)
/* Bounds on RocksDB's own memory and on the WAL a restart replays (store_open). */
#define STORE__MEMTABLES_MAX ((size_t)64 << 20)
#define STORE__WAL_MAX ((uint64_t)128 << 20)
/* Each open takes a memtable budget between (1 - 1/STORE__MEMTABLES_JITTER) x and 1 x the
 * bounds above, at random.  The nodes of a cluster write the same entries at the same rate: with
 * equal budgets all of them flushed their memtables at the same instant, and on a small machine
 * the three flushes together starved the loops (the top 1% of end-of-DATA -> 250 latencies fell
 * in those moments, issue 14 part 6).  Different budgets spread the flushes. */
#define STORE__MEMTABLES_JITTER 4
/* Bodies of at least this many bytes go to blob files (RocksDB's integrated BlobDB) when their
 * memtable is flushed: written there once, never again by compactions, which move only the
 * small references (issue 14, target 4); smaller ones stay in the table files. */
#define STORE__BLOB_MIN ((uint64_t)1024)

struct store_rocksdb {
	struct store base;
	rocksdb_t *db;
	rocksdb_options_t *opts, *body_opts;
	rocksdb_writeoptions_t *wsync, *wnosync, *wnowal;
	rocksdb_readoptions_t *ropts;
	rocksdb_column_family_handle_t *cf[STORE_CF__COUNT + 1]; /* [STORE_CF__COUNT]: default */
	int readonly;
};

struct store_rocksdb_iter {
	struct store_iter base;
	rocksdb_iterator_t *it;
	rocksdb_readoptions_t *ropts;	/* owned */
	const rocksdb_snapshot_t *snap; /* owned; NULL for an iterator of a view (the view's) */
	struct store_rocksdb *s;
};

/* A view: one RocksDB snapshot and read options reading at it. */
struct store_rocksdb_view {
	struct store_view base;
	const rocksdb_snapshot_t *snap; /* owned */
	rocksdb_readoptions_t *ropts;	/* owned: reads at snap */
};

static void
store__rdb_log(const char *what, const char *err)
{
	fprintf(stderr, "store: %s error=\"%s\"\n", what, err ? err : "?");
}

static int
store__rdb_write(struct store *base, const struct store_batch *b, int mode)
{
	struct store_rocksdb *s = (struct store_rocksdb *)base;
	if (s->readonly)
		return STORE_EINVAL;
	rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
	size_t pos = 0;
	enum store_op op;
	enum store_cf cf;
	const unsigned char *k, *v;
	size_t kl, vl;
	int rv;
	while ((rv = store_batch_next(b, &pos, &op, &cf, &k, &kl, &v, &vl)) == 1) {
		switch (op) {
		case STORE_OP_PUT:
			rocksdb_writebatch_put_cf(wb, s->cf[cf], (const char *)k, kl,
						  (const char *)v, vl);
			break;
		case STORE_OP_DELETE:
			rocksdb_writebatch_delete_cf(wb, s->cf[cf], (const char *)k, kl);
			break;
		case STORE_OP_DELETE_RANGE:
			rocksdb_writebatch_delete_range_cf(wb, s->cf[cf], (const char *)k, kl,
							   (const char *)v, vl);
			break;
		}
	}
	if (rv < 0) {
		rocksdb_writebatch_destroy(wb);
		return rv;
	}
	char *err = NULL;
	rocksdb_write(s->db,
		      mode == STORE_WRITE_SYNC	  ? s->wsync
		      : mode == STORE_WRITE_NOWAL ? s->wnowal
						  : s->wnosync,
		      wb, &err);
	rocksdb_writebatch_destroy(wb);
	if (err) {
		store__rdb_log("write", err);
		rocksdb_free(err);
		return STORE_EIO;
	}
	return 0;
}

static int
store__rdb_get(struct store *base, enum store_cf cf, const void *key, size_t klen, void **val,
	       size_t *vlen)
{
	struct store_rocksdb *s = (struct store_rocksdb *)base;
	char *err = NULL;
	size_t len = 0;
	char *v = rocksdb_get_cf(s->db, s->ropts, s->cf[cf], key, klen, &len, &err);
	if (err) {
		store__rdb_log("get", err);
		rocksdb_free(err);
		return STORE_EIO;
	}
	if (!v)
		return STORE_ENOTFOUND;
	/* hand out malloc'ed memory the caller frees with free() */
	void *copy = malloc(len ? len : 1);
	if (!copy) {
		rocksdb_free(v);
		return STORE_ENOMEM;
	}
	memcpy(copy, v, len);
	rocksdb_free(v);
	*val = copy;
	*vlen = len;
	return 0;
}

static void
store__rdb_iter_free(struct store_iter *base)
{
	struct store_rocksdb_iter *it = (struct store_rocksdb_iter *)base;
	rocksdb_iter_destroy(it->it);
	rocksdb_readoptions_destroy(it->ropts);
	if (it->snap)
		rocksdb_release_snapshot(it->s->db, it->snap);
	free(it);
}

static void
store__rdb_iter_seek(struct store_iter *base, const void *key, size_t klen)
{
	struct store_rocksdb_iter *it = (struct store_rocksdb_iter *)base;
	if (klen)
		rocksdb_iter_seek(it->it, key, klen);
	else
		rocksdb_iter_seek_to_first(it->it);
}

static void
store__rdb_iter_seek_last(struct store_iter *base)
{
	rocksdb_iter_seek_to_last(((struct store_rocksdb_iter *)base)->it);
}

static int
store__rdb_iter_valid(struct store_iter *base)
{
	return rocksdb_iter_valid(((struct store_rocksdb_iter *)base)->it) != 0;
}

static void
store__rdb_iter_next(struct store_iter *base)
{
	rocksdb_iter_next(((struct store_rocksdb_iter *)base)->it);
}

static const unsigned char *
store__rdb_iter_key(struct store_iter *base, size_t *klen)
{
	return (const unsigned char *)rocksdb_iter_key(((struct store_rocksdb_iter *)base)->it,
						       klen);
}

static const unsigned char *
store__rdb_iter_value(struct store_iter *base, size_t *vlen)
{
	return (const unsigned char *)rocksdb_iter_value(((struct store_rocksdb_iter *)base)->it,
							 vlen);
}

static int
store__rdb_iter_status(struct store_iter *base)
{
	char *err = NULL;
	rocksdb_iter_get_error(((struct store_rocksdb_iter *)base)->it, &err);
	if (err) {
		store__rdb_log("iterate", err);
		rocksdb_free(err);
		return STORE_EIO;
	}
	return 0;
}

static const struct store_iter_ops store__rdb_iter_ops = {
    .free = store__rdb_iter_free,
    .seek = store__rdb_iter_seek,
    .seek_last = store__rdb_iter_seek_last,
    .valid = store__rdb_iter_valid,
    .next = store__rdb_iter_next,
    .key = store__rdb_iter_key,
    .value = store__rdb_iter_value,
    .status = store__rdb_iter_status,
};

static int
store__rdb_iter_new(struct store *base, enum store_cf cf, struct store_iter **out)
{
	struct store_rocksdb *s = (struct store_rocksdb *)base;
	struct store_rocksdb_iter *it = calloc(1, sizeof(*it));
	if (!it)
		return STORE_ENOMEM;
	it->base.ops = &store__rdb_iter_ops;
	it->s = s;
	it->ropts = rocksdb_readoptions_create();
	it->snap = rocksdb_create_snapshot(s->db);
	rocksdb_readoptions_set_snapshot(it->ropts, it->snap);
	/* scans (the queue index rebuild, the dump) should not evict the hot blocks */
	rocksdb_readoptions_set_fill_cache(it->ropts, 0);
	it->it = rocksdb_create_iterator_cf(s->db, it->ropts, s->cf[cf]);
	*out = &it->base;
	return 0;
}

/* ---- views ---- */

static int
store__rdb_view_new(struct store *base, struct store_view **out)
{
	struct store_rocksdb *s = (struct store_rocksdb *)base;
	struct store_rocksdb_view *v = calloc(1, sizeof(*v));
	if (!v)
		return STORE_ENOMEM;
	v->base.s = base;
	v->ropts = rocksdb_readoptions_create();
	v->snap = rocksdb_create_snapshot(s->db);
	rocksdb_readoptions_set_snapshot(v->ropts, v->snap);
	/* a view is streamed once, front to back: do not evict the hot blocks for it */
	rocksdb_readoptions_set_fill_cache(v->ropts, 0);
	*out = &v->base;
	return 0;
}

static void
store__rdb_view_free(struct store_view *base)
{
	struct store_rocksdb_view *v = (struct store_rocksdb_view *)base;
	struct store_rocksdb *s = (struct store_rocksdb *)base->s;
	rocksdb_readoptions_destroy(v->ropts);
	rocksdb_release_snapshot(s->db, v->snap);
	free(v);
}

static int
store__rdb_view_get(struct store_view *base, enum store_cf cf, const void *key, size_t klen,
		    void **val, size_t *vlen)
{
	struct store_rocksdb_view *v = (struct store_rocksdb_view *)base;
	struct store_rocksdb *s = (struct store_rocksdb *)base->s;
	char *err = NULL;
	size_t len = 0;
	char *r = rocksdb_get_cf(s->db, v->ropts, s->cf[cf], key, klen, &len, &err);
	if (err) {
		store__rdb_log("get", err);
		rocksdb_free(err);
		return STORE_EIO;
	}
	if (!r)
		return STORE_ENOTFOUND;
	void *copy = malloc(len ? len : 1);
	if (!copy) {
		rocksdb_free(r);
		return STORE_ENOMEM;
	}
	memcpy(copy, r, len);
	rocksdb_free(r);
	*val = copy;
	*vlen = len;
	return 0;
}

static int
store__rdb_view_iter_new(struct store_view *base, enum store_cf cf, struct store_iter **out)
{
	struct store_rocksdb_view *v = (struct store_rocksdb_view *)base;
	struct store_rocksdb *s = (struct store_rocksdb *)base->s;
	struct store_rocksdb_iter *it = calloc(1, sizeof(*it));
	if (!it)
		return STORE_ENOMEM;
	it->base.ops = &store__rdb_iter_ops;
	it->s = s;
	it->ropts = rocksdb_readoptions_create();
	rocksdb_readoptions_set_snapshot(it->ropts, v->snap);
	rocksdb_readoptions_set_fill_cache(it->ropts, 0);
	it->it = rocksdb_create_iterator_cf(s->db, it->ropts, s->cf[cf]);
	*out = &it->base;
	return 0;
}

static void
store__rdb_free(struct store *base)
{
	struct store_rocksdb *s = (struct store_rocksdb *)base;
	/* No flush here, column family by column family: it would persist the state of one
	 * before the others (a crash between two could keep compacted log deletions without
	 * the state they stand for).  RocksDB's own close flushes every column family atomically
	 * when NOWAL writes are unpersisted (atomic_flush); a WAL-only tail is replayed at the
	 * next open (at most STORE__WAL_MAX). */
	for (int i = 0; i <= STORE_CF__COUNT; i++)
		if (s->cf[i])
			rocksdb_column_family_handle_destroy(s->cf[i]);
	if (s->db)
		rocksdb_close(s->db);
	rocksdb_writeoptions_destroy(s->wsync);
	rocksdb_writeoptions_destroy(s->wnosync);
	rocksdb_writeoptions_destroy(s->wnowal);
	rocksdb_readoptions_destroy(s->ropts);
	rocksdb_options_destroy(s->opts);
	if (s->body_opts)
		rocksdb_options_destroy(s->body_opts);
	free(s);
}

static const struct store_ops store__rdb_ops = {
    .write = store__rdb_write,
    .get = store__rdb_get,
    .iter_new = store__rdb_iter_new,
    .free = store__rdb_free,
    .view_new = store__rdb_view_new,
    .view_free = store__rdb_view_free,
    .view_get = store__rdb_view_get,
    .view_iter_new = store__rdb_view_iter_new,
};

int
store_open(const char *dir, int readonly, struct store **out)
{
	if (!dir || !*dir)
		return STORE_EINVAL;
	struct store_rocksdb *s = calloc(1, sizeof(*s));
	if (!s)
		return STORE_ENOMEM;
	s->base.ops = &store__rdb_ops;
	s->readonly = readonly;
	s->opts = rocksdb_options_create();
	rocksdb_options_set_create_if_missing(s->opts, 1);
	rocksdb_options_set_create_missing_column_families(s->opts, 1);
	rocksdb_options_increase_parallelism(s->opts, 2);
	/* Keep RocksDB's own info logs small: one file, a few MiB. */
	rocksdb_options_set_max_log_file_size(s->opts, STORE__INFO_LOG_MAX);
	rocksdb_options_set_keep_log_file_num(s->opts, STORE__INFO_LOG_KEEP);
	/* Obsolete WALs, table and blob files are freed a few MiB at a time (see the header). */
	char terr[256];
	if (!readonly && store_rdb_trash_setup(s->opts, STORE__FREE_RATE, STORE__FREE_CHUNK,
					       STORE__FREE_TRASH_RATIO, STORE__INFO_LOG_MAX,
					       STORE__INFO_LOG_KEEP, terr, sizeof(terr)) != 0)
		fprintf(stderr,
			"store: open dir=%s event=free-at-once error=\"%s\": obsolete files are "
			"deleted whole\n",
			dir, terr);
	/* Memory and restart time stay bounded whatever the queue's size (issue 14): all the
	 * column families' memtables together hold at most STORE__MEMTABLES_MAX (RocksDB flushes
	 * the biggest beyond it), and the WAL that a restart replays into them at most
	 * STORE__WAL_MAX (beyond it the memtables still needing the oldest WAL are flushed). */
	uint32_t r = 0;
	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
		r = (uint32_t)time(NULL) ^ (uint32_t)(uintptr_t)s;
	size_t mem =
	    STORE__MEMTABLES_MAX -
	    (size_t)(((uint64_t)r * (STORE__MEMTABLES_MAX / STORE__MEMTABLES_JITTER)) >> 32);
	rocksdb_options_set_db_write_buffer_size(s->opts, mem);
	rocksdb_options_set_write_buffer_size(s->opts, mem / 2);
	rocksdb_options_set_max_total_wal_size(s->opts, STORE__WAL_MAX);
	/* STORE_WRITE_NOWAL (store.h): every flush takes all the column families at one point,
	 * so what a crash keeps of the writes made without the WAL is a prefix of them. */
	rocksdb_options_set_atomic_flush(s->opts, 1);
	/* See the header: a torn tail is dropped, corruption before it refuses the open. */
	rocksdb_options_set_wal_recovery_mode(s->opts,
					      rocksdb_tolerate_corrupted_tail_records_recovery);
	s->wsync = rocksdb_writeoptions_create();
	const char *unsafe = getenv(STORE_TEST_UNSAFE_NO_SYNC_ENV);
	int no_sync = unsafe && strcmp(unsafe, "1") == 0;
	if (no_sync)
		fprintf(
		    stderr,
		    "store: open dir=%s event=unsafe-no-sync %s=1: TEST ONLY, synced writes are "
		    "not fsynced\n",
		    dir, STORE_TEST_UNSAFE_NO_SYNC_ENV);
	rocksdb_writeoptions_set_sync(s->wsync, !no_sync);
	s->wnosync = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(s->wnosync, 0);
	s->wnowal = rocksdb_writeoptions_create();
	rocksdb_writeoptions_disable_WAL(s->wnowal, 1);
	s->ropts = rocksdb_readoptions_create();

	const char *names[STORE_CF__COUNT + 1];
	const rocksdb_options_t *cfopts[STORE_CF__COUNT + 1];
	for (int i = 0; i < STORE_CF__COUNT; i++) {
		names[i] = store_cf_name((enum store_cf)i);
		cfopts[i] = s->opts;
	}
	names[STORE_CF__COUNT] = "default";
	cfopts[STORE_CF__COUNT] = s->opts;
	s->body_opts = rocksdb_options_create_copy(s->opts);
	rocksdb_options_set_enable_blob_files(s->body_opts, 1);
	rocksdb_options_set_min_blob_size(s->body_opts, STORE__BLOB_MIN);
	/* compactions of the oldest quarter of the blob files move what is still live out of
	 * them, so files of delivered bodies are freed (the few long-deferred bodies in them are
	 * written a second time) */
	rocksdb_options_set_enable_blob_gc(s->body_opts, 1);
	cfopts[STORE_CF_BODY] = s->body_opts;

	char *err = NULL;
	if (readonly) {
		/* Every table file is opened at once and held (max_open_files -1): once open, the
		 * view survives the live node's compactions, which delete files.  The open itself
		 * races with them (a file the MANIFEST names is gone by the time it is opened:
		 * "No such file"): try again, a bounded number of times. */
		rocksdb_options_set_max_open_files(s->opts, -1);
		for (int t = 1;; t++) {
			s->db = rocksdb_open_for_read_only_column_families(
			    s->opts, dir, STORE_CF__COUNT + 1, names, cfopts, s->cf, 0, &err);
			if (s->db || !err || !strstr(err, "No such file") ||
			    t == STORE_RO_OPEN_TRIES)
				break;
			rocksdb_free(err);
			err = NULL;
			struct timespec ts = {0, (long)t * STORE_RO_OPEN_BACKOFF_MS * 1000000L};
			nanosleep(&ts, NULL);
		}
	} else
		s->db = rocksdb_open_column_families(s->opts, dir, STORE_CF__COUNT + 1, names,
						     cfopts, s->cf, &err);
	if (err || !s->db) {
		fprintf(stderr, "store: open dir=%s error=\"%s\"\n", dir, err ? err : "?");
		rocksdb_free(err);
		s->db = NULL;
		memset(s->cf, 0, sizeof(s->cf));
		store__rdb_free(&s->base);
		return STORE_EIO;
	}
	*out = &s->base;
	return 0;
}
