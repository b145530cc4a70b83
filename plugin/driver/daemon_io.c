/*
 * daemon_io.c: one exchange with virtdlmd. A fresh unix socket per call (close-on-exec
 * except in the pre-exec child, whose socket QEMU inherits), one request frame out, one reply
 * frame in, each transfer bounded by VDL_IO_TIMEOUT_MS; then the reply's verdict: 0, or the
 * daemon's message raised as the libvirt error its code maps to (report.c).
 */
#include "internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* ------------------------------------------------------------------ socket and frames */

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

/* ------------------------------------------------------------------ one exchange */

/* An older virtdlmd refuses the request's "action" as an unknown field (protocol.py's
 * words: "<op>: unknown field(s) action"). */
static bool vdlOlderDaemon(const vdlReply *reply, const vdlCall *call)
{
    static const char unknown[] = "unknown field(s) ";
    const char *fields;

    if (!call->action || reply->code != VDL_CODE_INVALID_REQUEST || !reply->message ||
        !(fields = strstr(reply->message, unknown)))
        return false;
    fields += sizeof(unknown) - 1;
    return strncmp(fields, "action", 6) == 0 && (fields[6] == '\0' || fields[6] == ',');
}

static int vdlCheckReply(const vdlReply *reply, const vdlCall *call)
{
    int code = vdlLibvirtError(reply->code);

    if (reply->version != VDL_PROTOCOL_VERSION || reply->ok < 0)
        return vdlError(call->child, VDL_ERR_INTERNAL_ERROR,
                        "virtdlmd replied to %s without \"v\": %d and \"ok\" (socket %s)",
                        call->op, VDL_PROTOCOL_VERSION, vdlSocketPath);
    if (reply->ok)
        return 0;
    if (vdlOlderDaemon(reply, call))
        vdlError(call->child, VDL_ERR_OPERATION_FAILED,
                 "virtdlmd is older than this driver: it does not know on_lockfailure "
                 "(\"action\": \"%s\" in %s); restart virtdlmd from the same build as "
                 "dlm.so (socket %s)", call->action, call->op, vdlSocketPath);
    else if (reply->message && reply->message[0])
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
int vdlRequest(const vdlPrivate *priv, const vdlCall *call, int *sockOut, char **stateOut)
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
