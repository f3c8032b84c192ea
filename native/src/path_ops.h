/* Path-based calls for layer unpacking (path_ops.c): xattrs, mknod, nanosecond lutimes. */
#ifndef THINPOOL_PATH_OPS_H
#define THINPOOL_PATH_OPS_H
#include <node_api.h>
/* Adds lsetxattr, lgetxattr, llistxattr, mknod, lutimens, createFile and setMeta to the addon's exports. */
void define_path_ops(napi_env env, napi_value exports);
#endif
