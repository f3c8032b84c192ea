/*
 * Sending file bytes to a socket without copying them (sendfile: the socket's buffers reference
 * the page cache pages), for NBD READ replies. Everything here runs on the calling thread and
 * never waits: the socket is non-blocking (libuv's), and the file ranges are sent only when the
 * page cache holds all of them (cachestat), so sendfile does not read from the disk.
 *
 *   sendRuns(sockfd, header, filefd, positions, lengths) -> number
 *     -1: a range is not all in the page cache; -2: cachestat is missing (kernel < 6.5);
 *     nothing was sent in both cases. Else the bytes sent (header, then the runs in order),
 *     fewer than all when the socket filled up. Other errors (EPIPE, ECONNRESET) throw with
 *     the errno name as `code`.
 *   setSendBuffer(sockfd, bytes) -> number: SO_SNDBUFFORCE (privileged) or else SO_SNDBUF,
 *     returns the size the kernel reports afterwards.
 *   canPunchHoles(fd) -> boolean: whether the file system punches holes in this file (a punch
 *     past its end, which changes nothing, is refused with EOPNOTSUPP where it cannot).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "send_ops.h"

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

struct tp_cachestat_range {
  uint64_t off;
  uint64_t len;
};

struct tp_cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

#define MAX_RUNS 64

static void throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s failed: %s", what, strerror(err));
  napi_value code, text, error;
  napi_create_string_utf8(env, uv_err_name(-err), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_throw(env, error);
}

static int get_int(napi_env env, napi_value v, const char *name, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d < 0 || d > 9007199254740991.0 || d != (double)(int64_t)d) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a non-negative integer", name);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

static int get_bytes(napi_env env, napi_value v, const char *name, uint8_t **data, size_t *len) {
  bool is_typed = false;
  napi_is_typedarray(env, v, &is_typed);
  if (!is_typed) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a Uint8Array", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  void *p;
  napi_get_typedarray_info(env, v, &t, len, &p, &ab, &off);
  *data = p;
  return 1;
}

static int get_int_array(napi_env env, napi_value v, const char *name, int64_t *out, uint32_t *n) {
  bool is_array = false;
  napi_is_array(env, v, &is_array);
  uint32_t len = 0;
  if (is_array) napi_get_array_length(env, v, &len);
  if (!is_array || len > MAX_RUNS) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be an array of at most %d integers", name, MAX_RUNS);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  for (uint32_t i = 0; i < len; i++) {
    napi_value e;
    napi_get_element(env, v, i, &e);
    if (!get_int(env, e, name, &out[i])) return 0;
  }
  *n = len;
  return 1;
}

static napi_value number(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

/* 1 when every page of [pos, pos + len) is in the page cache, 0 when not, -2 without cachestat, -1 (errno set) on error. */
static int cached(int fd, int64_t pos, int64_t len) {
  if (len == 0) return 1;
  long page = sysconf(_SC_PAGESIZE);
  uint64_t first = (uint64_t)pos / (uint64_t)page;
  uint64_t last = ((uint64_t)pos + (uint64_t)len - 1) / (uint64_t)page;
  struct tp_cachestat_range range = { first * (uint64_t)page, (last - first + 1) * (uint64_t)page };
  struct tp_cachestat cs;
  memset(&cs, 0, sizeof cs);
  if (syscall(__NR_cachestat, fd, &range, &cs, 0) != 0) return errno == ENOSYS ? -2 : -1;
  return cs.nr_cache >= last - first + 1 ? 1 : 0;
}

static napi_value send_runs(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "sendRuns(sockfd, header, filefd, positions, lengths)");
    return NULL;
  }
  int64_t sockfd, filefd;
  uint8_t *header;
  size_t hlen;
  int64_t positions[MAX_RUNS], lengths[MAX_RUNS];
  uint32_t np, nl;
  if (!get_int(env, argv[0], "sockfd", &sockfd) || !get_bytes(env, argv[1], "header", &header, &hlen) || !get_int(env, argv[2], "filefd", &filefd) ||
      !get_int_array(env, argv[3], "positions", positions, &np) || !get_int_array(env, argv[4], "lengths", lengths, &nl))
    return NULL;
  if (np != nl) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "positions and lengths differ in length");
    return NULL;
  }
  int64_t data = 0;
  for (uint32_t i = 0; i < np; i++) data += lengths[i];
  for (uint32_t i = 0; i < np; i++) {
    int c = cached((int)filefd, positions[i], lengths[i]);
    if (c == -2) return number(env, -2);
    if (c < 0) {
      throw_errno(env, "cachestat", errno);
      return NULL;
    }
    if (c == 0) return number(env, -1);
  }
  int64_t sent = 0;
  int blocked = 0;
  while ((size_t)sent < hlen) {
    ssize_t n = send((int)sockfd, header + sent, hlen - (size_t)sent, MSG_DONTWAIT | MSG_NOSIGNAL | (data > 0 ? MSG_MORE : 0));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        blocked = 1;
        break;
      }
      throw_errno(env, "send", errno);
      return NULL;
    }
    sent += n;
  }
  int64_t dataSent = 0;
  for (uint32_t i = 0; i < np && !blocked; i++) {
    off_t off = (off_t)positions[i];
    int64_t left = lengths[i];
    while (left > 0) {
      ssize_t n = sendfile((int)sockfd, (int)filefd, &off, (size_t)left);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          blocked = 1;
          break;
        }
        throw_errno(env, "sendfile", errno);
        return NULL;
      }
      if (n == 0) {
        blocked = 1; /* end of file: the caller sends the rest (zeros) itself */
        break;
      }
      left -= n;
      dataSent += n;
    }
  }
  sent += dataSent;
  return number(env, (double)sent);
}

static napi_value set_send_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd, bytes;
  if (argc < 2 || !get_int(env, argv[0], "fd", &fd) || !get_int(env, argv[1], "bytes", &bytes)) return NULL;
  int v = bytes > 0x3fffffff ? 0x3fffffff : (int)bytes;
  if (setsockopt((int)fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) != 0) setsockopt((int)fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  int got = 0;
  socklen_t len = sizeof got;
  if (getsockopt((int)fd, SOL_SOCKET, SO_SNDBUF, &got, &len) != 0) {
    throw_errno(env, "getsockopt(SO_SNDBUF)", errno);
    return NULL;
  }
  return number(env, got);
}

static napi_value can_punch_holes(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t fd;
  if (argc < 1 || !get_int(env, argv[0], "fd", &fd)) return NULL;
  struct stat st;
  if (fstat((int)fd, &st) != 0) {
    throw_errno(env, "fstat", errno);
    return NULL;
  }
  /* Past the end, page aligned, with KEEP_SIZE: nothing to deallocate, the size stays. */
  off_t at = (st.st_size + 65535) / 65536 * 65536 + 65536;
  int rc;
  do {
    rc = fallocate((int)fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, 65536);
  } while (rc != 0 && errno == EINTR);
  napi_value v;
  napi_get_boolean(env, rc == 0, &v);
  return v;
}

void define_send_ops(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"sendRuns", NULL, send_runs, NULL, NULL, NULL, napi_enumerable, NULL},
    {"setSendBuffer", NULL, set_send_buffer, NULL, NULL, NULL, napi_enumerable, NULL},
    {"canPunchHoles", NULL, can_punch_holes, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
