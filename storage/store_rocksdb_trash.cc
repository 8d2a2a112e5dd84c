/*
 * store_rocksdb_trash.cc - see store_rocksdb_trash.h.  The one C++ file of the tree: RocksDB's
 * C API (7.8) cannot give a database an SstFileManager, its C++ API can.
 */
#include "store_rocksdb_trash.h"

#include <cstdio>
#include <memory>

#include <rocksdb/env.h>
#include <rocksdb/options.h>
#include <rocksdb/sst_file_manager.h>
#include <rocksdb/status.h>
#include <rocksdb/version.h>

/* The C API's options handle: one rocksdb::Options, as RocksDB's c.cc has defined it since the
 * C API first appeared.  store_rdb_trash_setup checks the layout before writing through it. */
struct rocksdb_options_t {
	rocksdb::Options rep;
};

extern "C" int
store_rdb_trash_setup(struct rocksdb_options_t *opts, int64_t rate, uint64_t chunk, double ratio,
		      size_t check_log_size, size_t check_log_keep, char *err, size_t errlen)
{
	rocksdb::Options &o = opts->rep;
	if (o.max_log_file_size != check_log_size || o.keep_log_file_num != check_log_keep) {
		std::snprintf(
		    err, errlen,
		    "RocksDB's options handle is not laid out as expected (RocksDB %d.%d)",
		    ROCKSDB_MAJOR, ROCKSDB_MINOR);
		return -1;
	}
	rocksdb::Status st;
	std::shared_ptr<rocksdb::SstFileManager> sfm(rocksdb::NewSstFileManager(
	    rocksdb::Env::Default(), nullptr, "", rate, true, &st, ratio, chunk));
	if (!st.ok() || !sfm) {
		std::snprintf(err, errlen, "%s", st.ToString().c_str());
		return -1;
	}
	o.sst_file_manager = sfm;
	return 0;
}
