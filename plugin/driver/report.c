/*
 * report.c: how dlm.so reports an error, and which libvirt error a daemon code becomes.
 *
 * Inside libvirtd an error is raised through virReportErrorHelper, looked up at run time
 * (dlm.so links no libvirt library), domain VIR_FROM_LOCKING. The pre-exec child (and a test
 * harness without libvirt) writes one "dlm: ..." line to stderr instead: no dlsym, no stdio
 * locks, one write(2).
 *
 * libvirt finds that line only in the domain's log file: after the child exits it reads the
 * log (qemuProcessReportLogError, "Process exited prior to exec: ..."). With virtlogd (the
 * default stdio_handler) the child's stderr is a pipe that virtlogd copies into that file, so
 * a child that exits at once races virtlogd, and libvirt's error may come without the reason
 * (seen in the lab under load: "internal error: Process exited prior to exec" and nothing
 * more). So the child waits, at most VDL_STDERR_DRAIN_MS, until the pipe is empty: ioctl and
 * nanosleep are async-signal-safe, and no libvirt interface says when virtlogd has copied it.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
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

/* Wait until whoever reads our stderr pipe (virtlogd) has read everything in it, at most
 * VDL_STDERR_DRAIN_MS. Nothing to wait for when stderr is a file or a terminal. */
static void vdlDrainStderr(void)
{
    const struct timespec step = { 0, VDL_STDERR_DRAIN_STEP_MS * 1000L * 1000L };
    struct stat st;
    int left = VDL_STDERR_DRAIN_MS / VDL_STDERR_DRAIN_STEP_MS;
    int unread = 0;

    if (fstat(STDERR_FILENO, &st) < 0 || !S_ISFIFO(st.st_mode))
        return;
    while (left-- > 0 && ioctl(STDERR_FILENO, FIONREAD, &unread) == 0 && unread > 0)
        nanosleep(&step, NULL);
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
    if (written > 0 && child)
        vdlDrainStderr();
    return -1;
}

int vdlCheckFlags(unsigned int flags, unsigned int allowed, const char *func, bool child)
{
    if (flags & ~allowed)
        return vdlError(child, VDL_ERR_INTERNAL_ERROR, "unsupported flags (0x%x) in function %s",
                        flags & ~allowed, func);
    return 0;
}
