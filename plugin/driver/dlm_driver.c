/*
 * dlm_driver.c: dlm.so, libvirt's lock-driver plugin for virtdlmd.
 *
 * Small and dumb: collect the owner and the resources libvirt hands over, send one request
 * per call to virtdlmd on a fresh unix socket (docs/protocol.md), map the reply to a
 * libvirt error. No threads, no caches, no policy. The only mutable global is the socket
 * path, written by drvInit. The REGISTER_ONLY path runs in libvirt's pre-exec child: it
 * takes no locks, calls no dlsym, and reports errors on stderr.
 */
#define _GNU_SOURCE
#include "dlm_driver.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

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
#define VDL_MAX_CONFIG_LINE_BYTES 8192
#define VDL_MAX_INT_DIGITS 9
#define VDL_JSON_MAX_DEPTH 32
#define VDL_UUID_STRING_BYTES 37            /* 8-4-4-4-12 and NUL */
#define VDL_FIRST_RESOURCES 8               /* initial capacity of the resource array */
#define VDL_STATE_CHARS \
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:,;=+/-"
#define VDL_COUNT(array) (sizeof(array) / sizeof((array)[0]))

_Static_assert(sizeof(((struct sockaddr_un){ 0 }).sun_path) == VDL_SOCKET_PATH_BYTES,
               "sun_path size");
_Static_assert(sizeof(vdlParam) == 32, "virLockManagerParam is 32 bytes");
_Static_assert(sizeof(vdlManager) == 16, "virLockManager is 16 bytes");
_Static_assert(sizeof(vdlDriver) == 72, "virLockDriver is 72 bytes");

/* The only mutable global: written by drvInit, read by every request. */
static char vdlSocketPath[VDL_SOCKET_PATH_BYTES] = VDL_DEFAULT_SOCKET_PATH;

typedef struct {
    unsigned int type;              /* VDL_RESOURCE_TYPE_* */
    unsigned int flags;             /* disk: VDL_RESOURCE_READONLY|SHARED */
    char *name;                     /* disk path or lease key */
    char *lockspace;                /* lease only */
    char *path;                     /* lease only */
    unsigned long long offset;      /* lease only */
} vdlResource;

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

typedef struct {
    const char *op;                 /* "register", "acquire", "release", "inquire" */
    int restrictFlag;               /* register: 0 or 1; -1 = no "restrict" field */
    bool child;                     /* pre-exec child: inheritable socket, stderr errors */
} vdlCall;

typedef struct {
    char *data;                     /* VDL_FRAME_CAPACITY bytes, frame header first */
    size_t len;
    bool overflow;
} vdlBuf;

typedef struct {
    int version;                    /* -1 = absent */
    int ok;                         /* -1 = absent, 0, 1 */
    int code;
    char *message;                  /* point into the reply body */
    char *state;
} vdlReply;

typedef struct {
    char *p;
    char *end;
} vdlScan;

typedef void (*vdlReportHelper)(int domcode, int errcode, const char *filename,
                                const char *funcname, size_t linenr, const char *fmt, ...);

/* Daemon error code (docs/protocol.md) -> libvirt error code: the one mapping table. */
static const struct {
    int code;
    int virErr;
} vdlErrorMap[] = {
    { 1, VDL_ERR_INTERNAL_ERROR },      /* INTERNAL */
    { 2, VDL_ERR_INTERNAL_ERROR },      /* PROTOCOL */
    { 3, VDL_ERR_INTERNAL_ERROR },      /* UNSUPPORTED_VERSION */
    { 4, VDL_ERR_OPERATION_FAILED },    /* DENIED */
    { 5, VDL_ERR_INTERNAL_ERROR },      /* INVALID_REQUEST */
    { 6, VDL_ERR_RESOURCE_BUSY },       /* BUSY */
    { 7, VDL_ERR_OPERATION_FAILED },    /* BACKEND */
    { 8, VDL_ERR_OPERATION_FAILED },    /* TIMEOUT */
    { 9, VDL_ERR_OPERATION_FAILED },    /* RESTRICTED */
    { 10, VDL_ERR_OPERATION_FAILED },   /* POLICY */
    { 11, VDL_ERR_OPERATION_FAILED },   /* NO_SUCH_PROCESS */
    { 12, VDL_ERR_OPERATION_FAILED },   /* SHUTTING_DOWN */
};

static int vdlLibvirtError(int code)
{
    size_t i;

    for (i = 0; i < VDL_COUNT(vdlErrorMap); i++) {
        if (vdlErrorMap[i].code == code)
            return vdlErrorMap[i].virErr;
    }
    return VDL_ERR_INTERNAL_ERROR;      /* a code newer than this driver */
}

/* ------------------------------------------------------------------ errors */

static const char *vdlErrnoText(int err)
{
    const char *text = strerrordesc_np(err);   /* thread- and fork-safe, untranslated */

    return text ? text : "unknown error";
}

static int vdlReport(bool child, int code, const char *func, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Report one error: as a libvirt error inside libvirtd, else (the pre-exec child, a test
 * harness) as one "dlm: " line on stderr, which libvirt puts in the start error. -1. */
static int vdlReport(bool child, int code, const char *func, size_t line, const char *fmt, ...)
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
        helper(VDL_FROM_LOCKING, code, __FILE__, func, line, "%s", msg);
        return -1;
    }
    len = snprintf(out, sizeof(out), "dlm: %s\n", msg);
    written = write(STDERR_FILENO, out, len < 0 ? 0 : (size_t) len);
    (void) written;                     /* nowhere left to report a failed write */
    return -1;
}

#define vdlError(child, code, ...) vdlReport((child), (code), __func__, __LINE__, __VA_ARGS__)
/* An argument or configuration error, raised in libvirtd. */
#define vdlFail(...) vdlError(false, VDL_ERR_INTERNAL_ERROR, __VA_ARGS__)

static int vdlCheckFlags(unsigned int flags, unsigned int allowed, const char *func, bool child)
{
    if (flags & ~allowed)
        return vdlError(child, VDL_ERR_INTERNAL_ERROR, "unsupported flags (0x%x) in function %s",
                        flags & ~allowed, func);
    return 0;
}

/* ------------------------------------------------------------------ config */

static int vdlSetSocketPath(const char *value, const char *origin)
{
    size_t len = strlen(value);

    if (value[0] != '/')
        return vdlFail("%s: socket_path '%s' must be an absolute path", origin, value);
    if (len >= VDL_SOCKET_PATH_BYTES)
        return vdlFail("%s: socket_path %.64s... is longer than a unix socket allows "
                       "(%d bytes)", origin, value, VDL_SOCKET_PATH_BYTES - 1);
    memcpy(vdlSocketPath, value, len + 1);
    return 0;
}

/* One line of libvirt conf syntax. Only `socket_path = "..."` is ours (then *found is set);
 * other keys, comments and blank lines are skipped: virtdlmd validates the whole file. */
static int vdlConfigLine(const char *line, const char *where, char *value, bool *found)
{
    static const char key[] = "socket_path";
    const char *p = line + strspn(line, " \t");
    size_t n = 0;

    if (strncmp(p, key, sizeof(key) - 1) != 0 ||
        isalnum((unsigned char) p[sizeof(key) - 1]) || p[sizeof(key) - 1] == '_')
        return 0;
    p += sizeof(key) - 1;
    p += strspn(p, " \t");
    if (*p++ != '=')
        goto malformed;
    p += strspn(p, " \t");
    if (*p++ != '"')
        goto malformed;
    for (; *p && *p != '"' && n < VDL_SOCKET_PATH_BYTES; p++) {
        if (*p == '\\' && p[1])
            p++;
        value[n++] = *p;
    }
    if (n == VDL_SOCKET_PATH_BYTES)
        return vdlFail("%s: socket_path is longer than a unix socket allows (%d bytes)",
                       where, VDL_SOCKET_PATH_BYTES - 1);
    if (*p++ != '"')
        goto malformed;
    p += strspn(p, " \t\r\n");
    if (*p && *p != '#')
        goto malformed;
    value[n] = '\0';
    *found = true;
    return 0;

 malformed:
    vdlFail("%s: socket_path: expected = and a quoted string", where);
    return -1;
}

static int vdlReadConfig(const char *path)
{
    char line[VDL_MAX_CONFIG_LINE_BYTES];
    char value[VDL_SOCKET_PATH_BYTES];
    char where[VDL_MAX_PATH_BYTES + 16];
    unsigned int lineno = 0;
    bool found = false;
    FILE *fp = NULL;
    int ret = -1;

    if (!path || (!(fp = fopen(path, "re")) && errno == ENOENT))
        return 0;                       /* no file: all defaults */
    if (!fp) {
        vdlFail("cannot read %s: %s", path, vdlErrnoText(errno));
        goto cleanup;
    }
    while (fgets(line, sizeof(line), fp)) {
        snprintf(where, sizeof(where), "%s:%u", path, ++lineno);
        if (!strchr(line, '\n') && !feof(fp)) {
            vdlFail("%s: line longer than %d bytes", where, VDL_MAX_CONFIG_LINE_BYTES - 2);
            goto cleanup;
        }
        if (vdlConfigLine(line, where, value, &found) < 0)
            goto cleanup;
    }
    if (ferror(fp)) {
        vdlFail("cannot read %s: %s", path, vdlErrnoText(errno));
        goto cleanup;
    }
    if (found && vdlSetSocketPath(value, path) < 0)
        goto cleanup;
    ret = 0;

 cleanup:
    if (fp)
        fclose(fp);
    return ret;
}

/* ------------------------------------------------------------------ owner and resources */

static void vdlResourceClear(vdlResource *res)
{
    free(res->name);
    free(res->lockspace);
    free(res->path);
    memset(res, 0, sizeof(*res));
}

static void vdlPrivateFree(vdlPrivate *priv)
{
    size_t i;

    if (!priv)
        return;
    for (i = 0; i < priv->nresources; i++)
        vdlResourceClear(&priv->resources[i]);
    free(priv->resources);
    free(priv->name);
    free(priv);
}

/* Copy a string parameter, bounded; what names it in errors ("disk path", ...). */
static int vdlCopyString(const char *what, const char *value, size_t limit, char **out)
{
    size_t len = value ? strlen(value) : 0;

    if (!value)
        return vdlFail("%s is missing", what);
    if (len > limit)
        return vdlFail("%s %.64s... is %zu bytes, over the limit of %zu", what, value, len,
                       limit);
    if (!(*out = strdup(value)))
        return vdlFail("out of memory copying %s %s", what, value);
    return 0;
}

static bool vdlIsString(int type)
{
    return type == VDL_PARAM_STRING || type == VDL_PARAM_CSTRING;
}

/* drvNew's parameters: uuid, name, id, pid, uri, each once and with its type. */
static int vdlOwnerParam(vdlPrivate *priv, const vdlParam *param)
{
    static const char *const keys[] = { "uuid", "name", "id", "pid", "uri" };
    static const int types[] = { VDL_PARAM_UUID, VDL_PARAM_STRING, VDL_PARAM_UINT,
                                 VDL_PARAM_UINT, VDL_PARAM_CSTRING };
    const unsigned char *u = param->value.uuid;
    size_t i;

    for (i = 0; i < VDL_COUNT(keys); i++) {
        if (param->key && strcmp(param->key, keys[i]) == 0)
            break;
    }
    if (i == VDL_COUNT(keys) || (priv->seen & (1u << i)) ||
        !(param->type == types[i] || (vdlIsString(param->type) && vdlIsString(types[i]))))
        return vdlFail("unexpected or repeated domain parameter '%s' of type %d",
                       param->key ? param->key : "(null)", param->type);
    priv->seen |= 1u << i;
    if (i == 0)
        snprintf(priv->uuid, sizeof(priv->uuid),
                 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
                 u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    else if (i == 1)
        return vdlCopyString("domain name", param->value.str, VDL_MAX_NAME_BYTES, &priv->name);
    else if (i == 2)
        priv->id = param->value.iv;     /* libvirt stores the int id in the UINT slot */
    else if (i == 3)
        priv->pid = param->value.ui;
    return 0;                           /* uri: not part of the wire owner */
}

static int vdlLeaseParam(vdlResource *res, const vdlParam *param)
{
    const char *key = param->key ? param->key : "(null)";

    if (strcmp(key, "path") == 0 && vdlIsString(param->type) && !res->path)
        return vdlCopyString("lease path", param->value.str, VDL_MAX_PATH_BYTES, &res->path);
    if (strcmp(key, "lockspace") == 0 && vdlIsString(param->type) && !res->lockspace)
        return vdlCopyString("lease lockspace", param->value.str, VDL_MAX_NAME_BYTES,
                             &res->lockspace);
    if (strcmp(key, "offset") == 0 && param->type == VDL_PARAM_ULONG) {
        res->offset = param->value.ul;
        return 0;
    }
    return vdlFail("unexpected or repeated parameter '%s' of type %d for lease %s",
                   key, param->type, res->name);
}

static int vdlDiskResource(vdlResource *res, const char *name, size_t nparams,
                           unsigned int flags)
{
    if (vdlCheckFlags(flags, VDL_RESOURCE_READONLY | VDL_RESOURCE_SHARED, __func__, false) < 0)
        return -1;
    if (nparams)
        return vdlFail("disk %s: unexpected %zu parameters", name ? name : "(null)", nparams);
    return vdlCopyString("disk path", name, VDL_MAX_PATH_BYTES, &res->name);
}

static int vdlLeaseResource(vdlResource *res, const char *name, size_t nparams,
                            const vdlParam *params, unsigned int flags)
{
    size_t i;

    if (vdlCheckFlags(flags, 0, __func__, false) < 0 ||
        vdlCopyString("lease key", name, VDL_MAX_NAME_BYTES, &res->name) < 0)
        return -1;
    for (i = 0; i < nparams; i++) {
        if (vdlLeaseParam(res, &params[i]) < 0)
            return -1;
    }
    return 0;
}

static int vdlAppendResource(vdlPrivate *priv, vdlResource *res)
{
    vdlResource *grown;

    if (priv->nresources == priv->capacity) {
        size_t capacity = priv->capacity ? priv->capacity * 2 : VDL_FIRST_RESOURCES;

        if (!(grown = realloc(priv->resources, capacity * sizeof(*grown))))
            return vdlFail("out of memory adding resource %s", res->name);
        priv->resources = grown;
        priv->capacity = capacity;
    }
    priv->resources[priv->nresources++] = *res;
    memset(res, 0, sizeof(*res));       /* ownership moved */
    return 0;
}

/* ------------------------------------------------------------------ requests */

static void vdlBufAdd(vdlBuf *buf, const char *data, size_t len)
{
    if (buf->overflow || len > VDL_FRAME_CAPACITY - buf->len) {
        buf->overflow = true;
        return;
    }
    memcpy(buf->data + buf->len, data, len);
    buf->len += len;
}

static void vdlBufFormat(vdlBuf *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Literal JSON text (keys, numbers, booleans); strings go through vdlBufString. */
static void vdlBufFormat(vdlBuf *buf, const char *fmt, ...)
{
    char text[128];
    va_list ap;
    int len;

    va_start(ap, fmt);
    len = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t) len >= sizeof(text))
        buf->overflow = true;
    else
        vdlBufAdd(buf, text, (size_t) len);
}

/* A JSON string: ", \ and control characters escaped, every other byte as it is. */
static void vdlBufString(vdlBuf *buf, const char *s)
{
    char esc[8];

    vdlBufAdd(buf, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char) *s;

        if (c == '"' || c == '\\')
            vdlBufAdd(buf, c == '"' ? "\\\"" : "\\\\", 2);
        else if (c < 0x20)
            vdlBufAdd(buf, esc, (size_t) snprintf(esc, sizeof(esc), "\\u%04x", c));
        else
            vdlBufAdd(buf, s, 1);
    }
    vdlBufAdd(buf, "\"", 1);
}

static void vdlBufResource(vdlBuf *buf, const vdlResource *res)
{
    if (res->type == VDL_RESOURCE_TYPE_DISK) {
        vdlBufFormat(buf, "{\"type\":\"disk\",\"path\":");
        vdlBufString(buf, res->name);
        vdlBufFormat(buf, ",\"readonly\":%s,\"shared\":%s}",
                     res->flags & VDL_RESOURCE_READONLY ? "true" : "false",
                     res->flags & VDL_RESOURCE_SHARED ? "true" : "false");
        return;
    }
    vdlBufFormat(buf, "{\"type\":\"lease\",\"key\":");
    vdlBufString(buf, res->name);
    vdlBufFormat(buf, ",\"lockspace\":");
    vdlBufString(buf, res->lockspace ? res->lockspace : "");
    vdlBufFormat(buf, ",\"path\":");
    vdlBufString(buf, res->path ? res->path : "");
    vdlBufFormat(buf, ",\"offset\":%llu}", res->offset);
}

/* The whole frame: header, then {"v","op","owner","resources"[,"restrict"]}. */
static int vdlBuildRequest(vdlBuf *buf, const vdlPrivate *priv, const vdlCall *call)
{
    size_t body;
    size_t i;

    buf->len = VDL_FRAME_HEADER_BYTES;
    vdlBufFormat(buf, "{\"v\":%d,\"op\":\"%s\",\"owner\":{\"uuid\":", VDL_PROTOCOL_VERSION,
                 call->op);
    vdlBufString(buf, priv->uuid);
    vdlBufFormat(buf, ",\"name\":");
    vdlBufString(buf, priv->name);
    vdlBufFormat(buf, ",\"id\":%d,\"pid\":%u},\"resources\":[", priv->id, priv->pid);
    for (i = 0; i < priv->nresources; i++) {
        vdlBufAdd(buf, ",", i ? 1 : 0);
        vdlBufResource(buf, &priv->resources[i]);
    }
    vdlBufAdd(buf, "]", 1);
    if (call->restrictFlag >= 0)
        vdlBufFormat(buf, ",\"restrict\":%s", call->restrictFlag ? "true" : "false");
    vdlBufAdd(buf, "}", 1);
    if (buf->overflow)
        return vdlError(call->child, VDL_ERR_INTERNAL_ERROR,
                        "%s request for domain %s with %zu resources exceeds %d bytes",
                        call->op, priv->name, priv->nresources, VDL_MAX_FRAME_BYTES);
    body = buf->len - VDL_FRAME_HEADER_BYTES;
    for (i = 0; i < VDL_FRAME_HEADER_BYTES; i++)     /* big-endian length */
        buf->data[i] = (char) ((body >> (8 * (VDL_FRAME_HEADER_BYTES - 1 - i))) & 0xff);
    return 0;
}

/* ------------------------------------------------------------------ socket I/O */

/* A fresh connection; close-on-exec except in the child, whose socket QEMU inherits. */
static int vdlConnect(const vdlCall *call)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct timeval tv = { .tv_sec = VDL_IO_TIMEOUT_MS / 1000,
                          .tv_usec = (VDL_IO_TIMEOUT_MS % 1000) * 1000 };
    int sock = socket(AF_UNIX, SOCK_STREAM | (call->child ? 0 : SOCK_CLOEXEC), 0);

    if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
        vdlError(call->child, VDL_ERR_OPERATION_FAILED,
                 "cannot set up a socket for virtdlmd (socket %s): %s", vdlSocketPath,
                 vdlErrnoText(errno));
        goto error;
    }
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", vdlSocketPath);
    if (connect(sock, (const struct sockaddr *) &addr, sizeof(addr)) < 0) {
        vdlError(call->child, VDL_ERR_OPERATION_FAILED,
                 "virtdlmd is not running (socket %s: %s)", vdlSocketPath,
                 vdlErrnoText(errno));
        goto error;
    }
    return sock;

 error:
    if (sock >= 0)
        close(sock);
    return -1;
}

/* Send or receive exactly len bytes, across short transfers and EINTR. */
static int vdlTransfer(int sock, const vdlCall *call, char *data, size_t len, bool sending)
{
    const char *verb = sending ? "send the request" : "read the reply";
    size_t done = 0;
    ssize_t n;

    while (done < len) {
        if (sending)
            n = send(sock, data + done, len - done, MSG_NOSIGNAL);
        else
            n = recv(sock, data + done, len - done, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return vdlError(call->child, VDL_ERR_OPERATION_FAILED,
                            "virtdlmd timed out: could not %s of %s within %d ms (socket %s)",
                            verb, call->op, VDL_IO_TIMEOUT_MS, vdlSocketPath);
        if (n <= 0)
            return vdlError(call->child, VDL_ERR_OPERATION_FAILED,
                            "cannot %s of %s to virtdlmd (socket %s): %s", verb, call->op,
                            vdlSocketPath, n < 0 ? vdlErrnoText(errno) : "connection closed");
        done += (size_t) n;
    }
    return 0;
}

/* Read one reply frame; returns its body, malloc'd and NUL-terminated. */
static char *vdlReceive(int sock, const vdlCall *call, size_t *lenOut)
{
    unsigned char header[VDL_FRAME_HEADER_BYTES];
    uint32_t len = 0;
    char *body = NULL;
    size_t i;

    if (vdlTransfer(sock, call, (char *) header, sizeof(header), false) < 0)
        return NULL;
    for (i = 0; i < sizeof(header); i++)
        len = (len << 8) | header[i];
    if (len == 0 || len > VDL_MAX_FRAME_BYTES) {
        vdlError(call->child, VDL_ERR_INTERNAL_ERROR,
                 "virtdlmd replied to %s with a frame of %u bytes (allowed: 1..%d)",
                 call->op, (unsigned int) len, VDL_MAX_FRAME_BYTES);
        return NULL;
    }
    if (!(body = malloc((size_t) len + 1))) {
        vdlError(call->child, VDL_ERR_INTERNAL_ERROR,
                 "out of memory reading the reply of virtdlmd to %s", call->op);
        return NULL;
    }
    if (vdlTransfer(sock, call, body, len, false) < 0) {
        free(body);
        return NULL;
    }
    body[len] = '\0';
    *lenOut = len;
    return body;
}

/* ------------------------------------------------------------------ reply scanner
 * A bounded scanner for the flat reply object: it reads v, ok, code, message and state,
 * unescapes strings in place (an escape never grows), and skips every other value. */

static void vdlScanSpace(vdlScan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n'))
        s->p++;
}

static bool vdlScanChar(vdlScan *s, char c)
{
    vdlScanSpace(s);
    if (s->p >= s->end || *s->p != c)
        return false;
    s->p++;
    return true;
}

/* \uXXXX: ASCII as is; NUL and everything else as '?' (virtdlmd sends UTF-8 unescaped). */
static bool vdlScanUnicode(vdlScan *s, char **w)
{
    char hex[5] = { 0 };
    unsigned long cp;

    if (s->end - s->p < 4)
        return false;
    memcpy(hex, s->p, 4);
    if (strspn(hex, "0123456789abcdefABCDEF") != 4)
        return false;
    s->p += 4;
    cp = strtoul(hex, NULL, 16);
    *(*w)++ = (char) (cp > 0 && cp < 0x80 ? cp : '?');
    return true;
}

static bool vdlScanString(vdlScan *s, char **out)
{
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    const char *esc;
    char *start;
    char *w;

    if (!vdlScanChar(s, '"'))
        return false;
    start = w = s->p;
    while (s->p < s->end && *s->p != '"') {
        if ((unsigned char) *s->p < 0x20)
            return false;
        if (*s->p != '\\') {
            *w++ = *s->p++;
        } else if (++s->p < s->end && *s->p == 'u') {
            s->p++;
            if (!vdlScanUnicode(s, &w))
                return false;
        } else if (s->p < s->end && *s->p && (esc = strchr(from, *s->p))) {
            *w++ = to[esc - from];
            s->p++;
        } else {
            return false;
        }
    }
    if (s->p >= s->end)
        return false;
    s->p++;                             /* the closing quote, now behind w */
    *w = '\0';
    if (out)
        *out = start;
    return true;
}

/* A bare token (true, false, null, a number); with out, a boolean or a bounded integer. */
static bool vdlScanToken(vdlScan *s, int *out, bool boolean)
{
    char *start;
    char *endp;
    size_t len;

    vdlScanSpace(s);
    start = s->p;
    while (s->p < s->end && (isalnum((unsigned char) *s->p) || *s->p == '-' || *s->p == '+' ||
                             *s->p == '.'))
        s->p++;
    len = (size_t) (s->p - start);
    if (!len || !out)
        return len > 0;
    if (boolean) {
        *out = len == 4 && strncmp(start, "true", 4) == 0;
        return *out || (len == 5 && strncmp(start, "false", 5) == 0);
    }
    if (len - (*start == '-') > VDL_MAX_INT_DIGITS ||
        !(isdigit((unsigned char) *start) || *start == '-'))
        return false;
    *out = (int) strtol(start, &endp, 10);  /* at most 9 digits: no overflow */
    return endp == s->p;
}

/* Skip any value, nested objects and arrays included, to a bounded depth. */
static bool vdlScanSkip(vdlScan *s)
{
    int depth = 0;

    do {
        vdlScanSpace(s);
        if (s->p < s->end && *s->p == '"') {
            if (!vdlScanString(s, NULL))
                return false;
        } else if (s->p < s->end && (*s->p == '{' || *s->p == '[')) {
            if (++depth > VDL_JSON_MAX_DEPTH)
                return false;
            s->p++;
        } else if (s->p < s->end && (*s->p == '}' || *s->p == ']')) {
            if (--depth < 0)
                return false;
            s->p++;
        } else if (s->p < s->end && (*s->p == ',' || *s->p == ':') && depth > 0) {
            s->p++;
        } else if (!vdlScanToken(s, NULL, false)) {
            return false;
        }
    } while (depth > 0);
    return true;
}

static bool vdlScanField(vdlScan *s, vdlReply *reply)
{
    char *key = NULL;

    if (!vdlScanString(s, &key) || !vdlScanChar(s, ':'))
        return false;
    if (strcmp(key, "v") == 0)
        return vdlScanToken(s, &reply->version, false);
    if (strcmp(key, "ok") == 0)
        return vdlScanToken(s, &reply->ok, true);
    if (strcmp(key, "code") == 0)
        return vdlScanToken(s, &reply->code, false);
    if (strcmp(key, "message") == 0)
        return vdlScanString(s, &reply->message);
    if (strcmp(key, "state") == 0)
        return vdlScanString(s, &reply->state);
    return vdlScanSkip(s);
}

/* True on success; on failure *where is the byte offset of the problem. */
static bool vdlScanReply(char *body, size_t len, vdlReply *reply, size_t *where)
{
    vdlScan s = { body, body + len };
    bool ok = false;

    *reply = (vdlReply) { .version = -1, .ok = -1 };
    if (!vdlScanChar(&s, '{'))
        goto cleanup;
    if (!vdlScanChar(&s, '}')) {
        do {
            if (!vdlScanField(&s, reply))
                goto cleanup;
        } while (vdlScanChar(&s, ','));
        if (!vdlScanChar(&s, '}'))
            goto cleanup;
    }
    vdlScanSpace(&s);
    ok = s.p == s.end;

 cleanup:
    *where = (size_t) (s.p - body);
    return ok;
}

/* ------------------------------------------------------------------ one exchange */

static int vdlCheckReply(const vdlReply *reply, const vdlCall *call)
{
    int code = vdlLibvirtError(reply->code);

    if (reply->version != VDL_PROTOCOL_VERSION || reply->ok < 0)
        return vdlError(call->child, VDL_ERR_INTERNAL_ERROR,
                        "virtdlmd replied to %s without \"v\": %d and \"ok\" (socket %s)",
                        call->op, VDL_PROTOCOL_VERSION, vdlSocketPath);
    if (reply->ok)
        return 0;
    if (reply->message && reply->message[0])
        vdlError(call->child, code, "%s", reply->message);   /* the daemon's words */
    else
        vdlError(call->child, code, "virtdlmd refused %s with code %d and no message",
                 call->op, reply->code);
    return -1;
}

/* State strings go unescaped into libvirt's XML: only a safe alphabet is let through. */
static int vdlCopyState(const char *state, const vdlCall *call, char **out)
{
    if (!state || !state[0])
        return 0;
    if (state[strspn(state, VDL_STATE_CHARS)] != '\0')
        return vdlError(call->child, VDL_ERR_INTERNAL_ERROR,
                        "virtdlmd returned a lock state with characters outside [%s]",
                        VDL_STATE_CHARS);
    if (!(*out = strdup(state)))
        return vdlError(call->child, VDL_ERR_INTERNAL_ERROR, "out of memory copying a state");
    return 0;
}

/* Connect, send the request, read and check the reply. On success the socket is handed to
 * *sockOut when given (register), else closed; the state is copied to *stateOut if given. */
static int vdlRequest(const vdlPrivate *priv, const vdlCall *call, int *sockOut,
                      char **stateOut)
{
    vdlBuf buf = { NULL, 0, false };
    vdlReply reply;
    char *body = NULL;
    size_t len = 0;
    size_t where = 0;
    int sock = -1;
    int ret = -1;

    if (!(buf.data = malloc(VDL_FRAME_CAPACITY))) {
        vdlError(call->child, VDL_ERR_INTERNAL_ERROR, "out of memory building %s", call->op);
        goto cleanup;
    }
    if (vdlBuildRequest(&buf, priv, call) < 0 || (sock = vdlConnect(call)) < 0 ||
        vdlTransfer(sock, call, buf.data, buf.len, true) < 0 ||
        !(body = vdlReceive(sock, call, &len)))
        goto cleanup;
    if (!vdlScanReply(body, len, &reply, &where)) {
        vdlError(call->child, VDL_ERR_INTERNAL_ERROR,
                 "virtdlmd sent a malformed reply to %s (at byte %zu of %zu)",
                 call->op, where, len);
        goto cleanup;
    }
    if (vdlCheckReply(&reply, call) < 0 ||
        (stateOut && vdlCopyState(reply.state, call, stateOut) < 0))
        goto cleanup;
    if (sockOut) {
        *sockOut = sock;
        sock = -1;
    }
    ret = 0;

 cleanup:
    if (sock >= 0)
        close(sock);
    free(body);
    free(buf.data);
    return ret;
}

static vdlPrivate *vdlPrivateOf(vdlManager *man, const char *func, bool child)
{
    if (!man || !man->privateData) {
        vdlError(child, VDL_ERR_INTERNAL_ERROR, "%s called without a lock manager from drvNew",
                 func);
        return NULL;
    }
    return man->privateData;
}

/* ------------------------------------------------------------------ entry points */

static int vdlInit(unsigned int version, const char *configFile, unsigned int flags)
{
    const char *env = secure_getenv(VDL_SOCKET_ENV);
    int ret = -1;

    if (version != VDL_LOCK_MANAGER_VERSION) {
        vdlFail("lock driver ABI version %u is not supported (dlm.so implements %u)",
                version, VDL_LOCK_MANAGER_VERSION);
        goto cleanup;
    }
    if (vdlCheckFlags(flags, 0, __func__, false) < 0)
        goto cleanup;
    memcpy(vdlSocketPath, VDL_DEFAULT_SOCKET_PATH, sizeof(VDL_DEFAULT_SOCKET_PATH));
    if (vdlReadConfig(configFile) < 0 ||
        (env && env[0] && vdlSetSocketPath(env, "$" VDL_SOCKET_ENV) < 0))
        goto cleanup;
    ret = 0;

 cleanup:
    return ret;
}

static int vdlDeinit(void)
{
    return 0;
}

static int vdlNew(vdlManager *man, unsigned int type, size_t nparams, vdlParam *params,
                  unsigned int flags)
{
    static const unsigned int required = (1u << 0) | (1u << 1) | (1u << 3); /* uuid name pid */
    vdlPrivate *priv = NULL;
    size_t i;
    int ret = -1;

    if (vdlCheckFlags(flags, VDL_NEW_STARTED, __func__, false) < 0)
        goto cleanup;
    if (type != VDL_OBJECT_TYPE_DOMAIN) {
        vdlFail("unsupported object type %u (only domains)", type);
        goto cleanup;
    }
    if (!(priv = calloc(1, sizeof(*priv)))) {
        vdlFail("out of memory for a lock manager");
        goto cleanup;
    }
    priv->id = -1;
    for (i = 0; i < nparams; i++) {
        if (vdlOwnerParam(priv, &params[i]) < 0)
            goto cleanup;
    }
    if ((priv->seen & required) != required) {
        vdlFail("libvirt passed no uuid, name or pid for the domain (%zu parameters)", nparams);
        goto cleanup;
    }
    man->privateData = priv;
    priv = NULL;
    ret = 0;

 cleanup:
    vdlPrivateFree(priv);               /* libvirt does not call drvFree after a failure */
    return ret;
}

static void vdlFree(vdlManager *man)
{
    if (!man)
        return;
    vdlPrivateFree(man->privateData);
    man->privateData = NULL;
}

static int vdlAddResource(vdlManager *man, unsigned int type, const char *name, size_t nparams,
                          vdlParam *params, unsigned int flags)
{
    vdlResource res = { .type = type, .flags = flags };
    vdlPrivate *priv = vdlPrivateOf(man, __func__, false);
    int ret = -1;

    if (!priv)
        goto cleanup;
    if (priv->nresources >= VDL_MAX_RESOURCES) {
        vdlFail("domain %s has more than %d resources to lock", priv->name, VDL_MAX_RESOURCES);
        goto cleanup;
    }
    if (type == VDL_RESOURCE_TYPE_DISK) {
        if (vdlDiskResource(&res, name, nparams, flags) < 0)
            goto cleanup;
    } else if (type == VDL_RESOURCE_TYPE_LEASE) {
        if (vdlLeaseResource(&res, name, nparams, params, flags) < 0)
            goto cleanup;
    } else {
        vdlFail("unsupported resource type %u for %s", type, name ? name : "(null)");
        goto cleanup;
    }
    if (vdlAppendResource(priv, &res) < 0)
        goto cleanup;
    ret = 0;

 cleanup:
    vdlResourceClear(&res);
    return ret;
}

static int vdlAcquire(vdlManager *man, const char *state, unsigned int flags, int action,
                      int *fd)
{
    static const unsigned int allowed = VDL_ACQUIRE_REGISTER_ONLY | VDL_ACQUIRE_RESTRICT;
    bool child = (flags & VDL_ACQUIRE_REGISTER_ONLY) != 0;
    vdlCall call = { child ? "register" : "acquire",
                     child ? (flags & VDL_ACQUIRE_RESTRICT) != 0 : -1, child };
    const vdlPrivate *priv;
    int sock = -1;
    int ret = -1;

    (void) state;                       /* all lock state lives in virtdlmd */
    (void) action;                      /* virtdlmd takes no action on lock loss */
    if (vdlCheckFlags(flags, allowed, __func__, child) < 0 ||
        !(priv = vdlPrivateOf(man, __func__, child)) ||
        vdlRequest(priv, &call, child ? &sock : NULL, NULL) < 0)
        goto cleanup;
    if (fd && child)
        *fd = sock;                     /* open either way: QEMU inherits it */
    ret = 0;

 cleanup:
    return ret;
}

/* release and inquire: flags 0, *state preset to NULL; inquire returns the daemon's state
 * (NULL when it is ""), which libvirt frees with free(). */
static int vdlStateRequest(vdlManager *man, char **state, unsigned int flags, const char *op,
                           const char *func)
{
    vdlCall call = { op, -1, false };
    bool inquire = strcmp(op, "inquire") == 0;
    const vdlPrivate *priv;
    int ret = -1;

    if (state)
        *state = NULL;
    if (vdlCheckFlags(flags, 0, func, false) < 0 || !(priv = vdlPrivateOf(man, func, false)) ||
        vdlRequest(priv, &call, NULL, inquire ? state : NULL) < 0)
        goto cleanup;
    ret = 0;

 cleanup:
    return ret;
}

static int vdlRelease(vdlManager *man, char **state, unsigned int flags)
{
    return vdlStateRequest(man, state, flags, "release", __func__);
}

static int vdlInquire(vdlManager *man, char **state, unsigned int flags)
{
    return vdlStateRequest(man, state, flags, "inquire", __func__);
}

const vdlDriver virLockDriverImpl = {
    .version = VDL_LOCK_MANAGER_VERSION,
    .flags = 0,                         /* no USES_STATE: virtdlmd keeps every lock's state */
    .drvInit = vdlInit,
    .drvDeinit = vdlDeinit,
    .drvNew = vdlNew,
    .drvFree = vdlFree,
    .drvAddResource = vdlAddResource,
    .drvAcquire = vdlAcquire,
    .drvRelease = vdlRelease,
    .drvInquire = vdlInquire,
};
