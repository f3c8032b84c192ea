/*
 * Path-based file-system calls Node does not expose, for unpacking image layers: lsetxattr,
 * lgetxattr, llistxattr (extended attributes of a path, never following a final symlink),
 * mknod (device nodes and fifos) and lutimensat (utimensat with AT_SYMLINK_NOFOLLOW and
 * nanosecond times, which Node's utimes/lutimes round through a double). Each call runs on the
 * libuv thread pool and returns a promise, so a slow or blocked file system (one served by this
 * very process) never stalls the event loop. Errors reject with an Error whose `code` is the
 * errno name ('ENODATA', 'ENOTSUP', 'EPERM', ...), `syscall` the call and `path` the path.
 *
 * Two compound calls keep a layer of many small files from paying a thread-pool round trip per
 * system call: createFile (open O_CREAT|O_EXCL|O_NOFOLLOW, write the bytes, fchown, fchmod,
 * futimens, close) and setMeta (lchown, chmod, utimensat without following; on a path or, with
 * a number in place of the path, on an open descriptor). A uid/gid or mode of -1 is left alone.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "path_ops.h"

typedef enum { P_SETXATTR, P_GETXATTR, P_LISTXATTR, P_MKNOD, P_UTIMENS, P_CREATE, P_SETMETA } path_op;

typedef struct {
  path_op op;
  char *path;
  char *name;       /* xattr name */
  char *value;      /* setxattr input; getxattr/listxattr output */
  size_t value_len;
  int flags;        /* setxattr flags */
  unsigned int mode;
  unsigned int major, minor;
  struct timespec times[2];
  long long uid, gid; /* -1: leave alone */
  int meta_mode;      /* -1: leave alone */
  int fd;             /* setMeta on a descriptor when >= 0 */
  int err;
  int missing;      /* getxattr: ENODATA */
  napi_deferred deferred;
  napi_async_work work;
} path_request;

static const char *op_name(path_op op) {
  switch (op) {
    case P_SETXATTR: return "lsetxattr";
    case P_GETXATTR: return "lgetxattr";
    case P_LISTXATTR: return "llistxattr";
    case P_MKNOD: return "mknod";
    case P_CREATE: return "createFile";
    case P_SETMETA: return "setMeta";
    default: return "utimensat";
  }
}

/* Reads a value-returning xattr call into a malloc'd buffer, growing it when the value grows. */
static void read_sized(path_request *r) {
  for (int attempt = 0; attempt < 8; attempt++) {
    ssize_t need = r->op == P_GETXATTR ? lgetxattr(r->path, r->name, NULL, 0) : llistxattr(r->path, NULL, 0);
    if (need < 0) {
      r->err = errno;
      return;
    }
    free(r->value);
    r->value = malloc(need > 0 ? (size_t)need : 1);
    if (r->value == NULL) {
      r->err = ENOMEM;
      return;
    }
    ssize_t got = r->op == P_GETXATTR ? lgetxattr(r->path, r->name, r->value, (size_t)need) : llistxattr(r->path, r->value, (size_t)need);
    if (got >= 0) {
      r->value_len = (size_t)got;
      return;
    }
    if (errno != ERANGE) {
      r->err = errno;
      return;
    }
  }
  r->err = ERANGE;
}

/* fchown/fchmod/futimens on an open file, or the path-based equivalents without following. */
static int apply_meta(path_request *r, int fd) {
  if (r->uid >= 0 || r->gid >= 0) {
    int rc = fd >= 0 ? fchown(fd, (uid_t)r->uid, (gid_t)r->gid) : lchown(r->path, (uid_t)r->uid, (gid_t)r->gid);
    if (rc != 0) return errno;
  }
  if (r->meta_mode >= 0) {
    int rc = fd >= 0 ? fchmod(fd, (mode_t)r->meta_mode) : chmod(r->path, (mode_t)r->meta_mode);
    if (rc != 0) return errno;
  }
  int rc = fd >= 0 ? futimens(fd, r->times) : utimensat(AT_FDCWD, r->path, r->times, AT_SYMLINK_NOFOLLOW);
  return rc != 0 ? errno : 0;
}

static void create_file(path_request *r) {
  int fd = open(r->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    r->err = errno;
    return;
  }
  size_t done = 0;
  while (done < r->value_len) {
    ssize_t n = write(fd, r->value + done, r->value_len - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      r->err = errno;
      break;
    }
    done += (size_t)n;
  }
  if (r->err == 0) r->err = apply_meta(r, fd);
  if (close(fd) != 0 && r->err == 0) r->err = errno;
}

static void execute(napi_env env, void *data) {
  (void)env;
  path_request *r = data;
  r->err = 0;
  switch (r->op) {
    case P_SETXATTR:
      if (lsetxattr(r->path, r->name, r->value, r->value_len, r->flags) != 0) r->err = errno;
      break;
    case P_GETXATTR:
    case P_LISTXATTR:
      read_sized(r);
      if (r->op == P_GETXATTR && r->err == ENODATA) {
        r->err = 0;
        r->missing = 1;
      }
      break;
    case P_MKNOD:
      if (mknod(r->path, (mode_t)r->mode, makedev(r->major, r->minor)) != 0) r->err = errno;
      break;
    case P_UTIMENS:
      if (utimensat(AT_FDCWD, r->path, r->times, AT_SYMLINK_NOFOLLOW) != 0) r->err = errno;
      break;
    case P_CREATE:
      create_file(r);
      break;
    case P_SETMETA:
      r->err = apply_meta(r, r->fd);
      break;
  }
}

static napi_value make_error(napi_env env, const path_request *r) {
  char msg[512];
  if (r->name != NULL)
    snprintf(msg, sizeof msg, "%s(%s, %s) failed: %s", op_name(r->op), r->path, r->name, strerror(r->err));
  else
    snprintf(msg, sizeof msg, "%s(%s) failed: %s", op_name(r->op), r->path, strerror(r->err));
  napi_value code, text, error, syscall, path;
  napi_create_string_utf8(env, uv_err_name(-r->err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_create_string_utf8(env, op_name(r->op), NAPI_AUTO_LENGTH, &syscall);
  napi_set_named_property(env, error, "syscall", syscall);
  napi_create_string_utf8(env, r->path, NAPI_AUTO_LENGTH, &path);
  napi_set_named_property(env, error, "path", path);
  return error;
}

static void release(path_request *r) {
  free(r->path);
  free(r->name);
  free(r->value);
  free(r);
}

static void complete(napi_env env, napi_status status, void *data) {
  path_request *r = data;
  if (status == napi_cancelled) r->err = ECANCELED;
  napi_value value;
  if (r->err != 0) {
    napi_reject_deferred(env, r->deferred, make_error(env, r));
  } else {
    if ((r->op == P_GETXATTR && !r->missing) || r->op == P_LISTXATTR) {
      void *out = NULL;
      napi_create_buffer_copy(env, r->value_len, r->value_len ? r->value : "", &out, &value);
    } else if (r->op == P_GETXATTR) {
      napi_get_null(env, &value);
    } else {
      napi_get_undefined(env, &value);
    }
    napi_resolve_deferred(env, r->deferred, value);
  }
  napi_delete_async_work(env, r->work);
  release(r);
}

/* Copies string argument `i` into a malloc'd NUL-terminated string; throws a TypeError otherwise. */
static char *get_string(napi_env env, napi_value *argv, size_t argc, size_t i, const char *what) {
  napi_valuetype type = napi_undefined;
  if (i < argc) napi_typeof(env, argv[i], &type);
  if (type != napi_string) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a string", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
  }
  size_t len = 0;
  napi_get_value_string_utf8(env, argv[i], NULL, 0, &len);
  char *s = malloc(len + 1);
  if (s == NULL) {
    napi_throw_error(env, "ENOMEM", "thinpool_native: out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[i], s, len + 1, &len);
  if (strlen(s) != len) {
    free(s);
    char msg[96];
    snprintf(msg, sizeof msg, "%s must not contain NUL characters", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", msg);
    return NULL;
  }
  return s;
}

/* Reads number argument `i` as an integer in [min, max]; throws otherwise. */
static int get_int(napi_env env, napi_value *argv, size_t argc, size_t i, const char *what, double min, double max, double *out) {
  napi_valuetype type = napi_undefined;
  if (i < argc) napi_typeof(env, argv[i], &type);
  if (type != napi_number) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a number", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  double v;
  napi_get_value_double(env, argv[i], &v);
  if (!(v >= min && v <= max) || v != (double)(long long)v) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be an integer in [%.0f, %.0f], got %.17g", what, min, max, v);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return 0;
  }
  *out = v;
  return 1;
}

static napi_value queue(napi_env env, path_request *r) {
  napi_value promise, name;
  napi_create_promise(env, &r->deferred, &promise);
  napi_create_string_utf8(env, "thinpool_native_path", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, execute, complete, r, &r->work) != napi_ok ||
      napi_queue_async_work(env, r->work) != napi_ok) {
    r->err = EIO;
    napi_reject_deferred(env, r->deferred, make_error(env, r));
    if (r->work != NULL) napi_delete_async_work(env, r->work);
    release(r);
  }
  return promise;
}

/* Parses the arguments of `op` into a new request, or returns NULL with a pending exception. */
static path_request *parse(napi_env env, napi_callback_info info, path_op op) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  path_request *r = calloc(1, sizeof *r);
  if (r == NULL) {
    napi_throw_error(env, "ENOMEM", "thinpool_native: out of memory");
    return NULL;
  }
  r->op = op;
  r->fd = -1;
  napi_valuetype first = napi_undefined;
  if (argc > 0) napi_typeof(env, argv[0], &first);
  double a, b, c, d;
  if (op == P_SETMETA && first == napi_number) {
    if (!get_int(env, argv, argc, 0, "fd", 0, 2147483647.0, &a)) goto fail;
    r->fd = (int)a;
    char label[32];
    snprintf(label, sizeof label, "fd %d", r->fd);
    r->path = strdup(label);
  } else {
    r->path = get_string(env, argv, argc, 0, "path");
  }
  if (r->path == NULL) goto fail;
  switch (op) {
    case P_SETXATTR: {
      r->name = get_string(env, argv, argc, 1, "name");
      if (r->name == NULL) goto fail;
      bool is_buffer = false;
      if (argc > 2) napi_is_buffer(env, argv[2], &is_buffer);
      if (!is_buffer) {
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "value must be a Buffer");
        goto fail;
      }
      void *data;
      size_t len;
      napi_get_buffer_info(env, argv[2], &data, &len);
      r->value = malloc(len ? len : 1);
      if (r->value == NULL) goto fail;
      memcpy(r->value, data, len);
      r->value_len = len;
      if (!get_int(env, argv, argc, 3, "flags", 0, 3, &a)) goto fail;
      r->flags = (int)a;
      break;
    }
    case P_GETXATTR:
      r->name = get_string(env, argv, argc, 1, "name");
      if (r->name == NULL) goto fail;
      break;
    case P_LISTXATTR:
      break;
    case P_MKNOD:
      if (!get_int(env, argv, argc, 1, "mode", 0, 0xffff, &a)) goto fail;
      if (!get_int(env, argv, argc, 2, "major", 0, 0xfffff, &b)) goto fail;
      if (!get_int(env, argv, argc, 3, "minor", 0, 0xfffff, &c)) goto fail;
      r->mode = (unsigned)a;
      r->major = (unsigned)b;
      r->minor = (unsigned)c;
      break;
    case P_UTIMENS:
      if (!get_int(env, argv, argc, 1, "atimeSec", -9007199254740991.0, 9007199254740991.0, &a)) goto fail;
      if (!get_int(env, argv, argc, 2, "atimeNsec", 0, 999999999, &b)) goto fail;
      if (!get_int(env, argv, argc, 3, "mtimeSec", -9007199254740991.0, 9007199254740991.0, &c)) goto fail;
      if (!get_int(env, argv, argc, 4, "mtimeNsec", 0, 999999999, &d)) goto fail;
      r->times[0].tv_sec = (time_t)a;
      r->times[0].tv_nsec = (long)b;
      r->times[1].tv_sec = (time_t)c;
      r->times[1].tv_nsec = (long)d;
      break;
    case P_CREATE:
    case P_SETMETA: {
      /* createFile(path, data, meta) / setMeta(pathOrFd, meta), meta = [uid, gid, mode, aSec, aNsec, mSec, mNsec] */
      size_t mi = 1;
      if (op == P_CREATE) {
        bool is_buffer = false;
        if (argc > 1) napi_is_buffer(env, argv[1], &is_buffer);
        if (!is_buffer) {
          napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "data must be a Buffer");
          goto fail;
        }
        void *data;
        size_t len;
        napi_get_buffer_info(env, argv[1], &data, &len);
        r->value = malloc(len ? len : 1);
        if (r->value == NULL) goto fail;
        memcpy(r->value, data, len);
        r->value_len = len;
        mi = 2;
      }
      bool is_array = false;
      if (argc > mi) napi_is_array(env, argv[mi], &is_array);
      uint32_t n = 0;
      if (is_array) napi_get_array_length(env, argv[mi], &n);
      if (n != 7) {
        napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "meta must be [uid, gid, mode, atimeSec, atimeNsec, mtimeSec, mtimeNsec]");
        goto fail;
      }
      napi_value m[7];
      for (uint32_t k = 0; k < 7; k++) napi_get_element(env, argv[mi], k, &m[k]);
      double v[7];
      static const char *names[7] = {"uid", "gid", "mode", "atimeSec", "atimeNsec", "mtimeSec", "mtimeNsec"};
      static const double lo[7] = {-1, -1, -1, -9007199254740991.0, 0, -9007199254740991.0, 0};
      static const double hi[7] = {4294967294.0, 4294967294.0, 07777, 9007199254740991.0, 999999999, 9007199254740991.0, 999999999};
      for (int k = 0; k < 7; k++)
        if (!get_int(env, m, 7, (size_t)k, names[k], lo[k], hi[k], &v[k])) goto fail;
      r->uid = (long long)v[0];
      r->gid = (long long)v[1];
      r->meta_mode = (int)v[2];
      r->times[0].tv_sec = (time_t)v[3];
      r->times[0].tv_nsec = (long)v[4];
      r->times[1].tv_sec = (time_t)v[5];
      r->times[1].tv_nsec = (long)v[6];
      break;
    }
  }
  return r;
fail:
  release(r);
  return NULL;
}

static napi_value start(napi_env env, napi_callback_info info, path_op op) {
  path_request *r = parse(env, info, op);
  return r == NULL ? NULL : queue(env, r);
}

static napi_value js_lsetxattr(napi_env env, napi_callback_info info) { return start(env, info, P_SETXATTR); }
static napi_value js_lgetxattr(napi_env env, napi_callback_info info) { return start(env, info, P_GETXATTR); }
static napi_value js_llistxattr(napi_env env, napi_callback_info info) { return start(env, info, P_LISTXATTR); }
static napi_value js_mknod(napi_env env, napi_callback_info info) { return start(env, info, P_MKNOD); }
static napi_value js_lutimens(napi_env env, napi_callback_info info) { return start(env, info, P_UTIMENS); }
static napi_value js_create_file(napi_env env, napi_callback_info info) { return start(env, info, P_CREATE); }
static napi_value js_set_meta(napi_env env, napi_callback_info info) { return start(env, info, P_SETMETA); }

void define_path_ops(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lutimens", NULL, js_lutimens, NULL, NULL, NULL, napi_enumerable, NULL},
    {"createFile", NULL, js_create_file, NULL, NULL, NULL, napi_enumerable, NULL},
    {"setMeta", NULL, js_set_meta, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
