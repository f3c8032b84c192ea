{
  "targets": [
    {
      "target_name": "thinpool_native",
      "sources": ["src/thinpool_native.c", "src/path_ops.c", "src/send_ops.c"],
      "defines": ["_GNU_SOURCE", "_FILE_OFFSET_BITS=64", "NAPI_VERSION=8"],
      "cflags": ["-std=c11", "-Wall", "-Wextra"]
    }
  ]
}
