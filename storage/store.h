/*
 * store.h - the storage interface: an ordered key-value store with column families and atomic
 * write batches, behind a small table of operations.  Two backends: RocksDB (store_open, the
 * only code including <rocksdb/c.h>) and an in-memory twin (store_mem_new) for unit tests.
 *
 * Layout (one RocksDB instance, one column family per concern):
 *   raft_log   key: big-endian uint64 log index; value: encoded entry (store_entry_encode):
 *              version, type, term, crc32 of the rest, data (a packed Relay__Command)
 *   raft_meta  small named records: STORE_META_HARDSTATE (term, vote), STORE_META_CONFIG
 *              (membership, opaque here), STORE_META_APPLIED (last applied log index)
 *   body       key: queue id; value: the message body as received
 *   queue      key: queue id; value: packed Relay__QueueRecord (envelope + per-recipient state)
 *   index      key: state byte, big-endian uint64 next attempt (ms), queue id; value: empty
 *
 * Happy path: build a store_batch (puts, deletes, delete ranges, in order), store_write it
 * atomically (sync=1 waits for the WAL fsync).  Reads see every completed write.
 *
 * Failure modes: every call returns 0 or a negative STORE_E* code; a failed write applied
 * nothing (batches are atomic).  Decoding a damaged value gives STORE_ECORRUPT, never a crash.
 *
 * Threads: a store may be used from several threads at once (the cluster writes from a worker
 * thread and reads from the loop thread); a batch or iterator belongs to one thread at a time.
 *
 * Views (store_view_new): a consistent, read-only point-in-time view of every column family at
 * once (a RocksDB snapshot; the memory twin copies), for streaming a replica's state to another
 * node while writes go on.  A view pins the data it shows (RocksDB keeps the old versions) until
 * it is freed, so holders keep few and free them soon.
 */
#ifndef RELAY_STORE_H
#define RELAY_STORE_H

#include <stddef.h>
#include <stdint.h>

#define STORE_ERRNO_MAP(X)                                                                         \
	X(STORE_EIO, -1, "storage I/O error")                                                      \
	X(STORE_ENOTFOUND, -2, "key not found")                                                    \
	X(STORE_ECORRUPT, -3, "corrupt value in the store")                                        \
	X(STORE_ENOMEM, -4, "out of memory")                                                       \
	X(STORE_EINVAL, -5, "invalid argument")                                                    \
	X(STORE_ETOOBIG, -6, "key or value too big")

enum store_errno {
#define STORE__ERRNO_ENUM(name, val, str) name = (val),
	STORE_ERRNO_MAP(STORE__ERRNO_ENUM)
#undef STORE__ERRNO_ENUM
};

const char *store_strerror(int code);

enum store_cf {
	STORE_CF_LOG = 0,
	STORE_CF_META,
	STORE_CF_BODY,
	STORE_CF_QUEUE,
	STORE_CF_INDEX,
	STORE_CF__COUNT
};

/* The column family's name on disk ("raft_log", ...). */
const char *store_cf_name(enum store_cf cf);

/* Bounds. */
#define STORE_KEY_MAX 1024u		    /* bytes in one key */
#define STORE_VALUE_MAX ((size_t)256 << 20) /* bytes in one value */
#define STORE_BATCH_MAX ((size_t)1 << 30)   /* encoded bytes in one batch */

/* raft_meta keys. */
#define STORE_META_HARDSTATE "hardstate"
#define STORE_META_CONFIG "config"
#define STORE_META_APPLIED "applied"
/* Present while a snapshot install is incomplete (cluster/cluster_raft.c): the queue CFs hold a
 * partial copy that must be wiped and fetched again; readers must not take them as a queue. */
#define STORE_META_INSTALL "snap_install"

struct store;
struct store_iter;
struct store_view;

/* ---- backends ---- */

/* Opens (creating if missing, with every column family) the RocksDB database in dir (the
 * directory itself must be creatable by RocksDB: its parent must exist).  readonly=1 opens it
 * read-only (for offline tools; works while another process has it open). */
int store_open(const char *dir, int readonly, struct store **out);

/* The in-memory twin: same semantics, nothing persisted. */
int store_mem_new(struct store **out);

/* Closes and frees (no batch or iterator of it may be alive). */
void store_free(struct store *s);

/* Test hook: the next n writes fail with STORE_EIO and apply nothing. */
void store_inject_write_failures(struct store *s, unsigned n);

/* ---- write batches: an owned, growable list of operations, applied atomically in order ---- */

struct store_batch {
	unsigned char *buf; /* owned: encoded operations */
	size_t len, cap;
	unsigned count; /* operations */
};

void store_batch_init(struct store_batch *b);
void store_batch_fini(struct store_batch *b);
void store_batch_clear(struct store_batch *b);
/* Key and value are copied.  STORE_ENOMEM / STORE_ETOOBIG leave the batch unchanged. */
int store_batch_put(struct store_batch *b, enum store_cf cf, const void *key, size_t klen,
		    const void *val, size_t vlen);
int store_batch_delete(struct store_batch *b, enum store_cf cf, const void *key, size_t klen);
/* Deletes the keys in [begin, end). */
int store_batch_delete_range(struct store_batch *b, enum store_cf cf, const void *begin,
			     size_t blen, const void *end, size_t elen);
/* Appends every operation of src to dst. */
int store_batch_append(struct store_batch *dst, const struct store_batch *src);

enum store_op { STORE_OP_PUT = 1, STORE_OP_DELETE = 2, STORE_OP_DELETE_RANGE = 3 };

/* Walks the operations of b in order: *pos starts at 0; returns 1 with the fields set, 0 at the
 * end, STORE_ECORRUPT on a damaged batch.  For DELETE_RANGE, val is the end key. */
int store_batch_next(const struct store_batch *b, size_t *pos, enum store_op *op, enum store_cf *cf,
		     const unsigned char **key, size_t *klen, const unsigned char **val,
		     size_t *vlen);

/* How store_write persists a batch (its third argument). */
#define STORE_WRITE_WAL 0  /* logged in the WAL, not fsynced: durable with the next fsync */
#define STORE_WRITE_SYNC 1 /* logged in the WAL and fsynced before the call returns */
/* memtables only: visible at once, durable only once a flush persists it; a crash before that
 * loses it (and every later NOWAL write) while WAL writes made after it survive */
#define STORE_WRITE_NOWAL 2
/*
 * Writes b atomically, as mode says (STORE_WRITE_*; 0 and 1 are the old sync flag).
 *
 * STORE_WRITE_NOWAL is for what can be rebuilt: the replicated state machine's writes, which
 * the Raft log (written with the WAL) replays from the applied index they carry (issue 14:
 * bodies written once - in the log entry's WAL record, not again in the body column family's).
 * Flushes are atomic across the column families (RocksDB's atomic_flush), so what persists of
 * the NOWAL writes is always a prefix of them, in write order, together with every WAL write up
 * to the same point: a state written with its applied index never persists without the other.
 * A writer must therefore put into NOWAL batches only what is consistent with any later prefix
 * of the WAL writes: in particular the deletion of log entries whose effect is in the NOWAL
 * state (compaction) goes into the NOWAL batch itself, never into a WAL one.
 */
int store_write(struct store *s, const struct store_batch *b, int mode);

/* ---- reads ---- */

/* *val is malloc'ed (caller frees); STORE_ENOTFOUND if absent. */
int store_get(struct store *s, enum store_cf cf, const void *key, size_t klen, void **val,
	      size_t *vlen);

/* Iterators see a consistent snapshot taken at creation. */
int store_iter_new(struct store *s, enum store_cf cf, struct store_iter **out);
void store_iter_free(struct store_iter *it);
/* Positions at the first key >= key (klen 0: the first key). */
void store_iter_seek(struct store_iter *it, const void *key, size_t klen);
/* Positions at the last key. */
void store_iter_seek_last(struct store_iter *it);
int store_iter_valid(struct store_iter *it);
void store_iter_next(struct store_iter *it);
/* Valid until the next seek/next/free. */
const unsigned char *store_iter_key(struct store_iter *it, size_t *klen);
const unsigned char *store_iter_value(struct store_iter *it, size_t *vlen);
/* 0, or STORE_EIO if iteration stopped on an error. */
int store_iter_status(struct store_iter *it);

/* ---- views: one consistent point in time across every column family ---- */

/* A view of s as of now (every completed write, nothing later).  Free it before s. */
int store_view_new(struct store *s, struct store_view **out);
void store_view_free(struct store_view *v);
/* store_get / store_iter_new, as of the view.  Iterators must be freed before the view. */
int store_view_get(struct store_view *v, enum store_cf cf, const void *key, size_t klen, void **val,
		   size_t *vlen);
int store_view_iter_new(struct store_view *v, enum store_cf cf, struct store_iter **out);
/* store_applied_get as of the view. */
int store_view_applied_get(struct store_view *v, uint64_t *index);

/* Adds the deletion of every key of cf (any key of at most STORE_KEY_MAX bytes). */
int store_batch_wipe_cf(struct store_batch *b, enum store_cf cf);

/*
 * A digest of a sequence of key/values: count, bytes (keys + values) and a crc32 over, for each,
 * the cf byte, the key length (4 bytes BE), the key, the value length (8 bytes BE), the value.
 * A value may be fed in pieces: store_digest_kv (header), then store_digest_data in order.
 */
struct store_digest {
	uint64_t keys;
	uint64_t bytes;
	uint32_t crc;
};
void store_digest_init(struct store_digest *d);
void store_digest_kv(struct store_digest *d, enum store_cf cf, const void *key, size_t klen,
		     uint64_t vlen);
void store_digest_data(struct store_digest *d, const void *data, size_t len);
/* The digest of every key/value of cfs[0..n) in v, in that order (cf by cf, key order). */
int store_view_digest(struct store_view *v, const enum store_cf *cfs, size_t n,
		      struct store_digest *d);

/* ---- the raft log ---- */

enum store_entry_type { STORE_ENTRY_NORMAL = 0, STORE_ENTRY_NOOP = 1, STORE_ENTRY_CONFIG = 2 };

struct store_entry {
	uint64_t index;
	uint64_t term;
	enum store_entry_type type;
	const unsigned char *data; /* borrowed (from the caller, or from the decoded buffer) */
	size_t len;
};

#define STORE_LOG_KEY_LEN 8
void store_log_key(uint64_t index, unsigned char key[STORE_LOG_KEY_LEN]);
uint64_t store_u64_decode(const unsigned char b[8]);
void store_u64_encode(uint64_t v, unsigned char b[8]);

/* Adds a put of entry e (index e->index) to the batch. */
int store_log_append(struct store_batch *b, const struct store_entry *e);
/* Adds the deletion of entries [first, last] to the batch (point deletes when few, else one
 * range delete). */
int store_log_delete(struct store_batch *b, uint64_t first, uint64_t last);
/* Decodes a raft_log value; e->data points into val.  STORE_ECORRUPT if damaged. */
int store_entry_decode(const unsigned char *key, size_t klen, const unsigned char *val, size_t vlen,
		       struct store_entry *e);
/* Reads entry index; e->data points into *buf (malloc'ed, caller frees). */
int store_log_get(struct store *s, uint64_t index, struct store_entry *e, void **buf);
/* First and last index in the log (0, 0 when empty). */
int store_log_bounds(struct store *s, uint64_t *first, uint64_t *last);

/* ---- raft_meta ---- */

#define STORE_VOTE_MAX 255u
struct store_hardstate {
	uint64_t term;
	char vote[STORE_VOTE_MAX + 1]; /* "" when none */
};
int store_hardstate_put(struct store_batch *b, const struct store_hardstate *hs);
int store_hardstate_get(struct store *s, struct store_hardstate *hs); /* ENOTFOUND if never set */
int store_applied_put(struct store_batch *b, uint64_t index);
int store_applied_get(struct store *s, uint64_t *index); /* 0 when never set */

/* ---- backend table (for the backends only) ---- */

struct store_ops {
	int (*write)(struct store *s, const struct store_batch *b, int mode);
	int (*get)(struct store *s, enum store_cf cf, const void *key, size_t klen, void **val,
		   size_t *vlen);
	int (*iter_new)(struct store *s, enum store_cf cf, struct store_iter **out);
	void (*free)(struct store *s);
	int (*view_new)(struct store *s, struct store_view **out);
	void (*view_free)(struct store_view *v);
	int (*view_get)(struct store_view *v, enum store_cf cf, const void *key, size_t klen,
			void **val, size_t *vlen);
	int (*view_iter_new)(struct store_view *v, enum store_cf cf, struct store_iter **out);
};

struct store_iter_ops {
	void (*free)(struct store_iter *it);
	void (*seek)(struct store_iter *it, const void *key, size_t klen);
	void (*seek_last)(struct store_iter *it);
	int (*valid)(struct store_iter *it);
	void (*next)(struct store_iter *it);
	const unsigned char *(*key)(struct store_iter *it, size_t *klen);
	const unsigned char *(*value)(struct store_iter *it, size_t *vlen);
	int (*status)(struct store_iter *it);
};

struct store {
	const struct store_ops *ops;
	unsigned fail_writes; /* test hook: guarded by the backend's write path (atomic) */
};

struct store_iter {
	const struct store_iter_ops *ops;
};

struct store_view {
	struct store *s; /* borrowed: the store it views */
};

#endif
