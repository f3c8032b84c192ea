/*
 * File-system calls Node does not expose, each run on the libuv thread pool and returned as a
 * promise: punchHole (fallocate PUNCH_HOLE|KEEP_SIZE), allocate (fallocate mode 0: the range
 * gets real blocks, so later writes there cannot fail for lack of space), seekData / seekHole (lseek SEEK_DATA /
 * SEEK_HOLE), tryLockExclusive (flock LOCK_EX|LOCK_NB: 1 when taken, 0 when another open file holds
 * it; the kernel drops the lock when the holder's file is closed or its process dies). Errors reject with an Error whose `code` is the errno name ('ENOSPC', 'EBADF', ...).
 * writeRuns writes several runs of buffers (pwritev each) and optionally fdatasyncs, all in one
 * thread-pool job (a commit's "write these blocks, then sync" costs one round trip).
 * The path-based calls for layer unpacking (xattrs, mknod, nanosecond lutimes) are in path_ops.c.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/uio.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "path_ops.h"
#include "send_ops.h"

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

#define MAX_SAFE_INTEGER 9007199254740991.0

typedef enum { OP_PUNCH_HOLE, OP_SEEK_DATA, OP_SEEK_HOLE, OP_FLOCK, OP_ALLOCATE } op_kind;

typedef struct {
  op_kind op;
  int fd;
  int64_t offset;
  int64_t length;
  int64_t result;
  int err;
  napi_deferred deferred;
  napi_async_work work;
} request;

static void execute(napi_env env, void *data) {
  (void)env;
  request *r = data;
  r->err = 0;
  if (r->op == OP_PUNCH_HOLE) {
    int rc;
    do {
      rc = fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)r->offset, (off_t)r->length);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0 && errno != EOPNOTSUPP) r->err = errno;
    r->result = 0;
  } else if (r->op == OP_ALLOCATE) {
    int rc;
    do {
      rc = fallocate(r->fd, 0, (off_t)r->offset, (off_t)r->length);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0 && errno != EOPNOTSUPP) r->err = errno;
    r->result = 0;
  } else if (r->op == OP_FLOCK) {
    int rc;
    do {
      rc = flock(r->fd, LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) r->result = 1;
    else if (errno == EWOULDBLOCK) r->result = 0;
    else r->err = errno;
  } else {
    off_t pos = lseek(r->fd, (off_t)r->offset, r->op == OP_SEEK_DATA ? SEEK_DATA : SEEK_HOLE);
    if (pos >= 0) r->result = (int64_t)pos;
    else if (errno == ENXIO) r->result = -1;
    else r->err = errno;
  }
}

static napi_value errno_error(napi_env env, const request *r) {
  char msg[256];
  if (r->op == OP_PUNCH_HOLE)
    snprintf(msg, sizeof msg, "fallocate(PUNCH_HOLE|KEEP_SIZE) of %" PRId64 " bytes at offset %" PRId64 " on fd %d failed: %s",
             r->length, r->offset, r->fd, strerror(r->err));
  else if (r->op == OP_ALLOCATE)
    snprintf(msg, sizeof msg, "fallocate of %" PRId64 " bytes at offset %" PRId64 " on fd %d failed: %s",
             r->length, r->offset, r->fd, strerror(r->err));
  else if (r->op == OP_FLOCK)
    snprintf(msg, sizeof msg, "flock(LOCK_EX|LOCK_NB) on fd %d failed: %s", r->fd, strerror(r->err));
  else
    snprintf(msg, sizeof msg, "lseek(%s) from offset %" PRId64 " on fd %d failed: %s",
             r->op == OP_SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", r->offset, r->fd, strerror(r->err));
  napi_value code, text, error, syscall;
  napi_create_string_utf8(env, uv_err_name(-r->err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_create_string_utf8(env, r->op == OP_PUNCH_HOLE || r->op == OP_ALLOCATE ? "fallocate" : r->op == OP_FLOCK ? "flock" : "lseek", NAPI_AUTO_LENGTH, &syscall);
  napi_set_named_property(env, error, "syscall", syscall);
  return error;
}

static void complete(napi_env env, napi_status status, void *data) {
  request *r = data;
  napi_value value;
  if (status == napi_cancelled) r->err = ECANCELED;
  if (r->err != 0) {
    napi_reject_deferred(env, r->deferred, errno_error(env, r));
  } else if (r->op == OP_PUNCH_HOLE || r->op == OP_ALLOCATE) {
    napi_get_undefined(env, &value);
    napi_resolve_deferred(env, r->deferred, value);
  } else {
    napi_create_double(env, (double)r->result, &value);
    napi_resolve_deferred(env, r->deferred, value);
  }
  napi_delete_async_work(env, r->work);
  free(r);
}

/* Reads argument `i` as an integer in [min, 2^53 - 1]; throws a RangeError/TypeError otherwise. */
static int get_integer(napi_env env, napi_value *argv, size_t argc, size_t i, const char *name, double min, int64_t *out) {
  napi_valuetype type = napi_undefined;
  if (i < argc) napi_typeof(env, argv[i], &type);
  if (type != napi_number) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a number", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  double v;
  napi_get_value_double(env, argv[i], &v);
  if (!(v >= min && v <= MAX_SAFE_INTEGER) || v != (double)(int64_t)v) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be an integer >= %.0f, got %.17g", name, min, v);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return 0;
  }
  *out = (int64_t)v;
  return 1;
}

/* Rejects a request's promise when its work could not be queued on the thread pool. */
static void reject_unqueued(napi_env env, napi_deferred deferred) {
  napi_value code, text, error;
  napi_create_string_utf8(env, "EIO", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, "thinpool_native: cannot queue work", NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_reject_deferred(env, deferred, error);
}

static napi_value start(napi_env env, napi_callback_info info, op_kind op) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd, offset = 0, length = 0;
  if (!get_integer(env, argv, argc, 0, "fd", 0, &fd)) return NULL;
  if (fd > INT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd is out of range");
    return NULL;
  }
  if (op != OP_FLOCK && !get_integer(env, argv, argc, 1, "offset", 0, &offset)) return NULL;
  if ((op == OP_PUNCH_HOLE || op == OP_ALLOCATE) && !get_integer(env, argv, argc, 2, "length", 1, &length)) return NULL;

  request *r = calloc(1, sizeof *r);
  if (r == NULL) {
    napi_throw_error(env, "ENOMEM", "thinpool_native: out of memory");
    return NULL;
  }
  r->op = op;
  r->fd = (int)fd;
  r->offset = offset;
  r->length = length;

  napi_value promise, name;
  napi_create_promise(env, &r->deferred, &promise);
  napi_create_string_utf8(env, "thinpool_native", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, execute, complete, r, &r->work) != napi_ok ||
      napi_queue_async_work(env, r->work) != napi_ok) {
    reject_unqueued(env, r->deferred);
    if (r->work != NULL) napi_delete_async_work(env, r->work);
    free(r);
  }
  return promise;
}

/*
 * readNow(fd, buffer, offset, length, position): a read that never waits for the disk
 * (preadv2 with RWF_NOWAIT), done on the calling thread: the bytes already in the page cache,
 * or -1 when the read would block (EAGAIN) or the file system cannot say (EOPNOTSUPP). Other
 * errors throw. Lets the data path skip a thread-pool round trip for cached reads.
 */
static napi_value read_now(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd, offset, length, position;
  if (!get_integer(env, argv, argc, 0, "fd", 0, &fd)) return NULL;
  void *data = NULL;
  size_t size = 0;
  bool is_typed = false;
  if (argc > 1) napi_is_typedarray(env, argv[1], &is_typed);
  if (!is_typed) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buffer must be a Uint8Array");
    return NULL;
  }
  napi_typedarray_type ttype;
  size_t tlen;
  napi_value ab;
  size_t byte_offset;
  napi_get_typedarray_info(env, argv[1], &ttype, &tlen, &data, &ab, &byte_offset);
  size = tlen;
  if (!get_integer(env, argv, argc, 2, "offset", 0, &offset)) return NULL;
  if (!get_integer(env, argv, argc, 3, "length", 0, &length)) return NULL;
  if (!get_integer(env, argv, argc, 4, "position", 0, &position)) return NULL;
  if ((uint64_t)offset + (uint64_t)length > size) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "offset + length exceeds the buffer");
    return NULL;
  }
  struct iovec iov = { (char *)data + offset, (size_t)length };
  ssize_t n;
  do {
    n = preadv2((int)fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  napi_value result;
  if (n < 0) {
    if (errno == EAGAIN || errno == EOPNOTSUPP || errno == ENOSYS) {
      napi_create_double(env, -1, &result);
      return result;
    }
    request r = { .op = OP_SEEK_DATA, .fd = (int)fd, .offset = position, .err = errno };
    napi_throw(env, errno_error(env, &r));
    return NULL;
  }
  napi_create_double(env, (double)n, &result);
  return result;
}

/* ---- writeRuns ------------------------------------------------------------------------ */

typedef struct {
  int fd;
  int sync;
  size_t nruns;
  int64_t *positions;     /* nruns */
  size_t *run_iovs;       /* nruns: how many iovecs each run has */
  struct iovec *iov;      /* all runs' iovecs back to back */
  size_t niov;
  napi_ref *refs;         /* one per buffer, kept alive until the job completes */
  int err;
  const char *failed;     /* "pwritev" or "fdatasync" */
  int64_t failed_at;
  napi_deferred deferred;
  napi_async_work work;
} runs_request;

/* pwritev of one run, finishing short writes and splitting at IOV_MAX. */
static int write_run(int fd, struct iovec *iov, size_t n, off_t pos) {
  while (n > 0) {
    size_t k = n > IOV_MAX ? IOV_MAX : n;
    ssize_t w = pwritev(fd, iov, (int)k, pos);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    pos += w;
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0 && w > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

static void runs_execute(napi_env env, void *data) {
  (void)env;
  runs_request *r = data;
  struct iovec *iov = r->iov;
  for (size_t i = 0; i < r->nruns && r->err == 0; i++) {
    int e = write_run(r->fd, iov, r->run_iovs[i], (off_t)r->positions[i]);
    if (e != 0) {
      r->err = e;
      r->failed = "pwritev";
      r->failed_at = r->positions[i];
    }
    iov += r->run_iovs[i];
  }
  if (r->err == 0 && r->sync) {
    int rc;
    do {
      rc = fdatasync(r->fd);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      r->err = errno;
      r->failed = "fdatasync";
    }
  }
}

static void runs_free(napi_env env, runs_request *r) {
  for (size_t i = 0; i < r->niov; i++)
    if (r->refs[i] != NULL) napi_delete_reference(env, r->refs[i]);
  free(r->positions);
  free(r->run_iovs);
  free(r->iov);
  free(r->refs);
  free(r);
}

static void runs_complete(napi_env env, napi_status status, void *data) {
  runs_request *r = data;
  if (status == napi_cancelled) r->err = ECANCELED;
  if (r->err != 0) {
    char msg[200];
    if (r->failed != NULL && strcmp(r->failed, "pwritev") == 0)
      snprintf(msg, sizeof msg, "pwritev at offset %" PRId64 " on fd %d failed: %s", r->failed_at, r->fd, strerror(r->err));
    else
      snprintf(msg, sizeof msg, "fdatasync on fd %d failed: %s", r->fd, strerror(r->err));
    napi_value code, text, error, syscall;
    napi_create_string_utf8(env, uv_err_name(-r->err), NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, code, text, &error);
    napi_create_string_utf8(env, r->failed ? r->failed : "writeRuns", NAPI_AUTO_LENGTH, &syscall);
    napi_set_named_property(env, error, "syscall", syscall);
    napi_reject_deferred(env, r->deferred, error);
  } else {
    napi_value u;
    napi_get_undefined(env, &u);
    napi_resolve_deferred(env, r->deferred, u);
  }
  napi_delete_async_work(env, r->work);
  runs_free(env, r);
}

/*
 * writeRuns(fd, positions, runs, sync): runs[i] is an array of Uint8Arrays written back to back
 * at positions[i]; then, when sync is true, fdatasync. Resolves when everything is done.
 */
static napi_value write_runs(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd;
  if (!get_integer(env, argv, argc, 0, "fd", 0, &fd)) return NULL;
  bool is_arr = false;
  if (argc > 2) napi_is_array(env, argv[1], &is_arr);
  bool is_arr2 = false;
  if (argc > 2) napi_is_array(env, argv[2], &is_arr2);
  if (!is_arr || !is_arr2) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "positions and runs must be arrays");
    return NULL;
  }
  uint32_t nruns, npos;
  napi_get_array_length(env, argv[1], &npos);
  napi_get_array_length(env, argv[2], &nruns);
  if (npos != nruns) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "positions and runs must have the same length");
    return NULL;
  }
  bool sync = false;
  if (argc > 3) napi_get_value_bool(env, argv[3], &sync);
  runs_request *r = calloc(1, sizeof *r);
  if (r == NULL) goto oom;
  r->fd = (int)fd;
  r->sync = sync;
  r->nruns = nruns;
  r->positions = calloc(nruns ? nruns : 1, sizeof *r->positions);
  r->run_iovs = calloc(nruns ? nruns : 1, sizeof *r->run_iovs);
  if (r->positions == NULL || r->run_iovs == NULL) goto oom;
  size_t total = 0;
  for (uint32_t i = 0; i < nruns; i++) {
    napi_value run;
    napi_get_element(env, argv[2], i, &run);
    bool ok = false;
    napi_is_array(env, run, &ok);
    if (!ok) {
      runs_free(env, r);
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "each run must be an array of Uint8Arrays");
      return NULL;
    }
    uint32_t n;
    napi_get_array_length(env, run, &n);
    r->run_iovs[i] = n;
    total += n;
    napi_value pos;
    napi_get_element(env, argv[1], i, &pos);
    if (!get_integer(env, &pos, 1, 0, "position", 0, &r->positions[i])) {
      runs_free(env, r);
      return NULL;
    }
  }
  r->iov = calloc(total ? total : 1, sizeof *r->iov);
  r->refs = calloc(total ? total : 1, sizeof *r->refs);
  if (r->iov == NULL || r->refs == NULL) goto oom;
  size_t k = 0;
  for (uint32_t i = 0; i < nruns; i++) {
    napi_value run;
    napi_get_element(env, argv[2], i, &run);
    for (uint32_t j = 0; j < r->run_iovs[i]; j++, k++) {
      napi_value b;
      napi_get_element(env, run, j, &b);
      bool typed = false;
      napi_is_typedarray(env, b, &typed);
      if (!typed) {
        r->niov = k;
        runs_free(env, r);
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "each buffer must be a Uint8Array");
        return NULL;
      }
      napi_typedarray_type tt;
      size_t len;
      void *p;
      napi_get_typedarray_info(env, b, &tt, &len, &p, NULL, NULL);
      r->iov[k].iov_base = p;
      r->iov[k].iov_len = len;
      napi_create_reference(env, b, 1, &r->refs[k]);
    }
  }
  r->niov = total;
  napi_value promise, name;
  napi_create_promise(env, &r->deferred, &promise);
  napi_create_string_utf8(env, "thinpool_native_writeRuns", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, runs_execute, runs_complete, r, &r->work) != napi_ok ||
      napi_queue_async_work(env, r->work) != napi_ok) {
    reject_unqueued(env, r->deferred);
    if (r->work != NULL) napi_delete_async_work(env, r->work);
    runs_free(env, r);
  }
  return promise;
oom:
  if (r != NULL) runs_free(env, r);
  napi_throw_error(env, "ENOMEM", "thinpool_native: out of memory");
  return NULL;
}

/*
 * dupFd(fd): a new descriptor for the same open file (fcntl F_DUPFD_CLOEXEC), on the calling
 * thread. Lets a connection accepted by net.Server be re-opened as a socket of its own
 * (`new net.Socket({ fd, onread })`) whose reads land in buffers the caller chooses.
 */
static napi_value dup_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd;
  if (!get_integer(env, argv, argc, 0, "fd", 0, &fd)) return NULL;
  int n;
  do {
    n = fcntl((int)fd, F_DUPFD_CLOEXEC, 3);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "fcntl(F_DUPFD_CLOEXEC) of fd %d failed: %s", (int)fd, strerror(errno));
    napi_throw_error(env, uv_err_name(-errno), msg);
    return NULL;
  }
  napi_value result;
  napi_create_int32(env, n, &result);
  return result;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) { return start(env, info, OP_PUNCH_HOLE); }
static napi_value seek_data(napi_env env, napi_callback_info info) { return start(env, info, OP_SEEK_DATA); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return start(env, info, OP_SEEK_HOLE); }
static napi_value try_lock(napi_env env, napi_callback_info info) { return start(env, info, OP_FLOCK); }
static napi_value allocate(napi_env env, napi_callback_info info) { return start(env, info, OP_ALLOCATE); }

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tryLockExclusive", NULL, try_lock, NULL, NULL, NULL, napi_enumerable, NULL},
    {"allocate", NULL, allocate, NULL, NULL, NULL, napi_enumerable, NULL},
    {"readNow", NULL, read_now, NULL, NULL, NULL, napi_enumerable, NULL},
    {"writeRuns", NULL, write_runs, NULL, NULL, NULL, napi_enumerable, NULL},
    {"dupFd", NULL, dup_fd, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  define_path_ops(env, exports);
  define_send_ops(env, exports);
  return exports;
}
