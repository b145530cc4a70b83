/*
 * json_shim.c: json.c's writer and scanner behind a flat C API, for a test build only
 * (tests/unit/test_driver_json.py links it with json.c and report.c and drives it through
 * ctypes with hypothesis). Never part of dlm.so: the Makefile builds the .c files of plugin/driver only.
 */
#include "../internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VDL_SHIM_EXPORT __attribute__((visibility("default")))

VDL_SHIM_EXPORT size_t vdlShimFrameCapacity(void);
VDL_SHIM_EXPORT int vdlShimScanReply(const char *body, size_t len, int *fields,
                                     char *message, char *state, size_t *where);
VDL_SHIM_EXPORT int vdlShimBuildRequest(const char *op, int restrictFlag, const char *action,
                                        const char *uuid,
                                        const char *name, int id, unsigned int pid,
                                        size_t nresources, const unsigned int *types,
                                        const unsigned int *flags, char *const *names,
                                        char *const *lockspaces, char *const *paths,
                                        const unsigned long long *offsets, char *out,
                                        size_t *outLen);

/* cppcheck-suppress unusedFunction ; called through ctypes */
size_t vdlShimFrameCapacity(void)
{
    return VDL_FRAME_CAPACITY;
}

/*
 * Scan body[0..len) from a malloc'd copy of exactly len bytes: no NUL after it (daemon_io.c
 * adds one, the scanner must not need it), so that a sanitizer sees any read past the end.
 * fields[] = version, ok, code, has message, has state. message and state (len + 1 bytes
 * each) get copies. 1 = accepted.
 */
/* cppcheck-suppress unusedFunction ; called through ctypes */
int vdlShimScanReply(const char *body, size_t len, int *fields, char *message, char *state,
                     size_t *where)
{
    vdlReply reply;
    char *copy = malloc(len ? len : 1);
    bool ok;

    if (!copy)
        return -1;
    memcpy(copy, body, len);
    ok = vdlScanReply(copy, len, &reply, where);
    fields[0] = reply.version;
    fields[1] = reply.ok;
    fields[2] = reply.code;
    fields[3] = reply.message != NULL;
    fields[4] = reply.state != NULL;
    snprintf(message, len + 1, "%s", reply.message ? reply.message : "");
    snprintf(state, len + 1, "%s", reply.state ? reply.state : "");
    free(copy);
    return ok;
}

/* Build one request frame into out (vdlShimFrameCapacity() bytes); action NULL = no "action"
 * field. 0 / -1 (too long). */
/* cppcheck-suppress unusedFunction ; called through ctypes */
int vdlShimBuildRequest(const char *op, int restrictFlag, const char *action, const char *uuid,
                        const char *name, int id, unsigned int pid, size_t nresources,
                        const unsigned int *types,
                        const unsigned int *flags, char *const *names, char *const *lockspaces,
                        char *const *paths, const unsigned long long *offsets, char *out,
                        size_t *outLen)
{
    vdlPrivate priv = { .id = id, .pid = pid, .nresources = nresources };
    vdlCall call = { op, restrictFlag, true, action };
    vdlBuf buf = { out, 0, false };
    vdlResource *res = calloc(nresources ? nresources : 1, sizeof(*res));
    size_t i;
    int ret;

    if (!res)
        return -1;
    snprintf(priv.uuid, sizeof(priv.uuid), "%s", uuid);
    priv.name = (char *) name;
    for (i = 0; i < nresources; i++) {
        res[i] = (vdlResource) { .type = types[i], .flags = flags[i], .name = names[i],
                                 .lockspace = lockspaces[i], .path = paths[i],
                                 .offset = offsets[i] };
    }
    priv.resources = res;
    ret = vdlBuildRequest(&buf, &priv, &call);
    *outLen = buf.len;
    free(res);
    return ret;
}
