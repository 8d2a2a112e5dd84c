/*
 * store_rocksdb_trash.h - RocksDB's obsolete files freed gradually (store_rocksdb_trash.cc).
 *
 * RocksDB deletes a WAL once the memtables it fed are flushed, and table and blob files once a
 * compaction has replaced them: tens of MiB at once.  On a disk mounted with online discard
 * (ext4 `discard`, common on cloud and virtual disks) freeing that many blocks in one unlink
 * holds the device for tens of ms, and a synced log write issued meanwhile waits behind it: that
 * was most of the top 1% of end-of-DATA -> 250 latencies on the 3-node bench (issue 14 part 6).
 * With this, RocksDB renames an obsolete file to NAME.trash and a thread of its own
 * (DeleteScheduler) frees it from the end, STORE__FREE_CHUNK bytes at a time, at most
 * STORE__FREE_RATE bytes per second.  Trash left by a crash is freed the same way after the next
 * open.  Trash beyond STORE__FREE_TRASH_RATIO x the live table and blob bytes is deleted at once.
 */
#ifndef RELAY_STORE_ROCKSDB_TRASH_H
#define RELAY_STORE_ROCKSDB_TRASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STORE__FREE_RATE ((int64_t)64 << 20)
#define STORE__FREE_CHUNK ((uint64_t)4 << 20)
#define STORE__FREE_TRASH_RATIO 64.0

/*
 * Gives opts (before the open) an SstFileManager that frees obsolete files at rate bytes/s in
 * chunks of chunk bytes.  The C API has no setter for it, so this reaches the rocksdb::Options
 * that the C handle wraps; check_log_size and check_log_keep are the values the caller set with
 * rocksdb_options_set_max_log_file_size and rocksdb_options_set_keep_log_file_num, read back
 * through that path first: if they differ (a RocksDB whose handle is laid out otherwise), opts
 * is left alone.  Returns 0, or -1 with a message in err (obsolete files are then deleted at
 * once, as RocksDB does by default).
 */
int store_rdb_trash_setup(struct rocksdb_options_t *opts, int64_t rate, uint64_t chunk,
			  double ratio, size_t check_log_size, size_t check_log_keep, char *err,
			  size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
