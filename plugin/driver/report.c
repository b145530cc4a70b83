/*
 * report.c: how dlm.so reports an error, and which libvirt error a daemon code becomes.
 *
 * Inside libvirtd an error is raised through virReportErrorHelper, looked up at run time
 * (dlm.so links no libvirt library), domain VIR_FROM_LOCKING. The pre-exec child (and a test
 * harness without libvirt) writes one "dlm: ..." line to stderr instead: no dlsym, no stdio
 * locks, one write(2).
 */
#define _GNU_SOURCE
#include "internal.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef void (*vdlReportHelper)(int domcode, int errcode, const char *filename,
                                const char *funcname, size_t linenr, const char *fmt, ...);

/* Daemon error code -> libvirt error code: the one mapping table (docs/protocol.md). */
static const struct {
    int code;
    int virErr;
} vdlErrorMap[] = {
    { VDL_CODE_INTERNAL, VDL_ERR_INTERNAL_ERROR },
    { VDL_CODE_PROTOCOL, VDL_ERR_INTERNAL_ERROR },
    { VDL_CODE_UNSUPPORTED_VERSION, VDL_ERR_INTERNAL_ERROR },
    { VDL_CODE_DENIED, VDL_ERR_OPERATION_FAILED },
    { VDL_CODE_INVALID_REQUEST, VDL_ERR_INTERNAL_ERROR },
    { VDL_CODE_BUSY, VDL_ERR_RESOURCE_BUSY },
    { VDL_CODE_BACKEND, VDL_ERR_OPERATION_FAILED },
    { VDL_CODE_TIMEOUT, VDL_ERR_OPERATION_FAILED },
    { VDL_CODE_RESTRICTED, VDL_ERR_OPERATION_FAILED },
    { VDL_CODE_POLICY, VDL_ERR_OPERATION_FAILED },
    { VDL_CODE_NO_SUCH_PROCESS, VDL_ERR_OPERATION_FAILED },
    { VDL_CODE_SHUTTING_DOWN, VDL_ERR_OPERATION_FAILED },
    { VDL_CODE_LOCKSPACE_UNAVAILABLE, VDL_ERR_OPERATION_FAILED },
};

int vdlLibvirtError(int code)
{
    size_t i;

    for (i = 0; i < VDL_COUNT(vdlErrorMap); i++) {
        if (vdlErrorMap[i].code == code)
            return vdlErrorMap[i].virErr;
    }
    return VDL_ERR_INTERNAL_ERROR;      /* a code newer than this driver */
}

const char *vdlErrnoText(int err)
{
    const char *text = strerrordesc_np(err);   /* thread- and fork-safe, untranslated */

    return text ? text : "unknown error";
}

/* Report one error: as a libvirt error inside libvirtd, else (the pre-exec child, a test
 * harness) as one "dlm: " line on stderr, which libvirt puts in the start error. -1. */
int vdlReport(bool child, int code, const char *file, const char *func, size_t line,
              const char *fmt, ...)
{
    char msg[VDL_MAX_MESSAGE_BYTES];
    char out[VDL_MAX_MESSAGE_BYTES + 8];
    vdlReportHelper helper = NULL;
    void *sym = NULL;
    ssize_t written;
    va_list ap;
    int len;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!child)
        sym = dlsym(RTLD_DEFAULT, "virReportErrorHelper");
    if (sym) {
        memcpy(&helper, &sym, sizeof(helper));
        helper(VDL_FROM_LOCKING, code, file, func, line, "%s", msg);
        return -1;
    }
    len = snprintf(out, sizeof(out), "dlm: %s\n", msg);
    written = write(STDERR_FILENO, out, len < 0 ? 0 : (size_t) len);
    (void) written;                     /* nowhere left to report a failed write */
    return -1;
}

int vdlCheckFlags(unsigned int flags, unsigned int allowed, const char *func, bool child)
{
    if (flags & ~allowed)
        return vdlError(child, VDL_ERR_INTERNAL_ERROR, "unsupported flags (0x%x) in function %s",
                        flags & ~allowed, func);
    return 0;
}
