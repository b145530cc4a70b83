/*
 * internal.h: what the files of dlm.so share. Nothing here is exported: the whole header is
 * compiled with hidden visibility, so the only dynamic symbol of dlm.so stays
 * virLockDriverImpl (dlm_driver.h).
 *
 *   dlm_driver.c  the driver table and its eight entry points
 *   owner.c       the owner and resources libvirt passes to drvNew / drvAddResource
 *   config.c      socket_path from qemu-dlm.conf and $VIRTDLM_SOCKET
 *   json.c        the request writer and the reply scanner (docs/protocol.md)
 *   daemon_io.c   one exchange with virtdlmd: connect, frames, timeouts, the reply's verdict
 *   report.c      error reporting and the daemon code -> libvirt error map
 *
 * Fork safety. drvAcquire with REGISTER_ONLY runs in libvirt's forked child of a
 * multithreaded libvirtd, just before exec of QEMU. Everything that path reaches
 * (vdlCall.child is true) must: take no lock (malloc is the one exception glibc makes safe
 * across fork), start no thread, call no dlsym, read no mutable global except vdlSocketPath
 * (written once by drvInit), report errors only with write(2) on stderr, and open its socket
 * without close-on-exec (QEMU inherits it; every other fd is close-on-exec).
 */
#ifndef VDL_INTERNAL_H
#define VDL_INTERNAL_H

#include "dlm_driver.h"

#include <stdbool.h>
#include <stddef.h>

#pragma GCC visibility push(hidden)

/* Limits and wire facts: the same numbers as plugin/virtdlm/protocol.py, client.py and
 * config.py (tests/unit/test_driver_drift.py compares them). */
#define VDL_DEFAULT_SOCKET_PATH "/run/libvirt/virtdlmd.sock"
#define VDL_SOCKET_ENV "VIRTDLM_SOCKET"
#define VDL_SOCKET_PATH_BYTES 108           /* sizeof(sun_path), NUL included */
#define VDL_IO_TIMEOUT_MS 30000             /* connect, send and receive, each */
#define VDL_PROTOCOL_VERSION 1
#define VDL_FRAME_HEADER_BYTES 4
#define VDL_MAX_FRAME_BYTES 65536
#define VDL_FRAME_CAPACITY (VDL_FRAME_HEADER_BYTES + VDL_MAX_FRAME_BYTES)
#define VDL_MAX_RESOURCES 256
#define VDL_MAX_PATH_BYTES 4096
#define VDL_MAX_NAME_BYTES 256

#define VDL_MAX_MESSAGE_BYTES 1024
#define VDL_STDERR_DRAIN_MS 1000            /* the child's wait for its error line to be read */
#define VDL_STDERR_DRAIN_STEP_MS 2          /* ... looked at this often */
#define VDL_UUID_STRING_BYTES 37            /* 8-4-4-4-12 and NUL */
#define VDL_STATE_CHARS \
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:,;=+/-"
#define VDL_COUNT(array) (sizeof(array) / sizeof((array)[0]))

/* The daemon's error codes (virtdlm.errors.ErrorCode, docs/protocol.md): append only. */
enum {
    VDL_CODE_INTERNAL = 1,
    VDL_CODE_PROTOCOL = 2,
    VDL_CODE_UNSUPPORTED_VERSION = 3,
    VDL_CODE_DENIED = 4,
    VDL_CODE_INVALID_REQUEST = 5,
    VDL_CODE_BUSY = 6,
    VDL_CODE_BACKEND = 7,
    VDL_CODE_TIMEOUT = 8,
    VDL_CODE_RESTRICTED = 9,
    VDL_CODE_POLICY = 10,
    VDL_CODE_NO_SUCH_PROCESS = 11,
    VDL_CODE_SHUTTING_DOWN = 12,
    VDL_CODE_LOCKSPACE_UNAVAILABLE = 13,
};

typedef struct {
    unsigned int type;              /* VDL_RESOURCE_TYPE_* */
    unsigned int flags;             /* disk: VDL_RESOURCE_READONLY|SHARED */
    char *name;                     /* disk path or lease key */
    char *lockspace;                /* lease only */
    char *path;                     /* lease only */
    unsigned long long offset;      /* lease only */
} vdlResource;

/* man->privateData: the owner (a QEMU process) and the resources added so far. */
typedef struct {
    char uuid[VDL_UUID_STRING_BYTES];
    char *name;
    int id;                         /* libvirt's domain id, -1 when inactive */
    unsigned int pid;
    unsigned int seen;              /* bit per owner parameter received */
    vdlResource *resources;
    size_t nresources;
    size_t capacity;
} vdlPrivate;

/* One call to the daemon. */
typedef struct {
    const char *op;                 /* "register", "acquire", "release", "inquire" */
    int restrictFlag;               /* register: 0 or 1; -1 = no "restrict" field */
    bool child;                     /* pre-exec child: inheritable socket, stderr errors */
    const char *action;             /* register, acquire: on_lockfailure ("default", ...,
                                       a static string); NULL = no "action" field */
} vdlCall;

/* A request frame being written. */
typedef struct {
    char *data;                     /* VDL_FRAME_CAPACITY bytes, frame header first */
    size_t len;
    bool overflow;
} vdlBuf;

/* The fields of a reply the driver reads. */
typedef struct {
    int version;                    /* -1 = absent */
    int ok;                         /* -1 = absent, 0, 1 */
    int code;
    char *message;                  /* point into the reply body */
    char *state;
} vdlReply;

/* report.c */
int vdlReport(bool child, int code, const char *file, const char *func, size_t line,
              const char *fmt, ...) __attribute__((format(printf, 6, 7)));
#define vdlError(child, code, ...) \
    vdlReport((child), (code), __FILE__, __func__, __LINE__, __VA_ARGS__)
/* An argument or configuration error, raised in libvirtd. */
#define vdlFail(...) vdlError(false, VDL_ERR_INTERNAL_ERROR, __VA_ARGS__)
const char *vdlErrnoText(int err);
int vdlCheckFlags(unsigned int flags, unsigned int allowed, const char *func, bool child);
int vdlLibvirtError(int code);

/* config.c */
extern char vdlSocketPath[VDL_SOCKET_PATH_BYTES];
int vdlLoadConfig(const char *configFile);

/* owner.c */
void vdlResourceClear(vdlResource *res);
void vdlPrivateFree(vdlPrivate *priv);
int vdlOwnerParam(vdlPrivate *priv, const vdlParam *param);
int vdlDiskResource(vdlResource *res, const char *name, size_t nparams, unsigned int flags);
int vdlLeaseResource(vdlResource *res, const char *name, size_t nparams,
                     const vdlParam *params, unsigned int flags);
int vdlAppendResource(vdlPrivate *priv, vdlResource *res);

/* json.c */
int vdlBuildRequest(vdlBuf *buf, const vdlPrivate *priv, const vdlCall *call);
bool vdlScanReply(char *body, size_t len, vdlReply *reply, size_t *where);

/* daemon_io.c */
int vdlRequest(const vdlPrivate *priv, const vdlCall *call, int *sockOut, char **stateOut);

#pragma GCC visibility pop

#endif /* VDL_INTERNAL_H */
