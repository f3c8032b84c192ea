#ifndef THINPOOL_SEND_OPS_H
#define THINPOOL_SEND_OPS_H

#include <node_api.h>

/* sendRuns, setSendBuffer, canPunchHoles (send_ops.c). */
void define_send_ops(napi_env env, napi_value exports);

#endif
