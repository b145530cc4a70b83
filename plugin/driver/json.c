/*
 * json.c: the two JSON texts dlm.so handles (docs/protocol.md).
 *
 * The writer builds a request frame in one buffer of VDL_FRAME_CAPACITY bytes: header, then
 * {"v","op","owner","resources"[,"restrict"][,"action"]}; strings are escaped (", \\, control
 * characters), every other byte goes as it is. The scanner reads the flat reply object: v,
 * ok, code, message and state, unescapes strings in place (an escape never grows), skips
 * every other value to a bounded depth, and never reads past the body it was given.
 * Both run in the pre-exec child too: no locks, no locale changes, no allocation.
 * tests/unit/test_driver_json.py fuzzes both through a test build (fuzz/json_shim.c).
 *
 * Why not json-c (see README.md): its parser calls duplocale() and newlocale() on every
 * parse, which take glibc's process-wide locale lock, a lock another libvirtd thread may
 * hold when libvirt forks the child that registers QEMU.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VDL_MAX_INT_DIGITS 9
#define VDL_JSON_MAX_DEPTH 32

typedef struct {
    char *p;
    char *end;
} vdlScan;

/* ------------------------------------------------------------------ request writer */

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

/* The whole frame: header, then {"v","op","owner","resources"[,"restrict"][,"action"]}. */
int vdlBuildRequest(vdlBuf *buf, const vdlPrivate *priv, const vdlCall *call)
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
    if (call->action) {
        vdlBufFormat(buf, ",\"action\":");
        vdlBufString(buf, call->action);
    }
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

/* ------------------------------------------------------------------ reply scanner */

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

static bool vdlScanWord(vdlScan *s, const char *word)
{
    size_t len = strlen(word);

    if ((size_t) (s->end - s->p) < len || memcmp(s->p, word, len) != 0)
        return false;
    s->p += len;
    return true;
}

static bool vdlScanDigits(vdlScan *s)
{
    const char *start = s->p;

    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start;
}

/* A number as JSON writes it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool vdlScanNumber(vdlScan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (!vdlScanDigits(s))
        return false;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!vdlScanDigits(s))
            return false;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!vdlScanDigits(s))
            return false;
    }
    return true;
}

/* An integer of at most VDL_MAX_INT_DIGITS digits ("v", "code"): no overflow possible. */
static bool vdlScanInt(vdlScan *s, int *out)
{
    const char *start;
    const char *d;
    int value = 0;

    vdlScanSpace(s);
    start = s->p;
    if (!vdlScanNumber(s))
        return false;
    d = start + (*start == '-');
    if (s->p - d > VDL_MAX_INT_DIGITS)
        return false;
    for (; d < s->p; d++) {
        if (*d < '0' || *d > '9')
            return false;               /* a fraction or an exponent */
        value = value * 10 + (*d - '0');
    }
    *out = *start == '-' ? -value : value;
    return true;
}

static bool vdlScanBool(vdlScan *s, int *out)
{
    vdlScanSpace(s);
    if (vdlScanWord(s, "true"))
        *out = 1;
    else if (vdlScanWord(s, "false"))
        *out = 0;
    else
        return false;
    return true;
}

static bool vdlScanValue(vdlScan *s, int depth);

/* An object or an array at s->p, skipped; depth counts the containers around it. */
static bool vdlScanContainer(vdlScan *s, int depth)
{
    bool object = *s->p++ == '{';
    char close = object ? '}' : ']';

    if (vdlScanChar(s, close))
        return true;
    do {
        if (object && (!vdlScanString(s, NULL) || !vdlScanChar(s, ':')))
            return false;
        if (!vdlScanValue(s, depth))
            return false;
    } while (vdlScanChar(s, ','));
    return vdlScanChar(s, close);
}

/* Skip any JSON value, nested objects and arrays to VDL_JSON_MAX_DEPTH levels. */
static bool vdlScanValue(vdlScan *s, int depth)
{
    vdlScanSpace(s);
    if (s->p >= s->end)
        return false;
    switch (*s->p) {
    case '"':
        return vdlScanString(s, NULL);
    case '{':
    case '[':
        return depth < VDL_JSON_MAX_DEPTH && vdlScanContainer(s, depth + 1);
    case 't':
        return vdlScanWord(s, "true");
    case 'f':
        return vdlScanWord(s, "false");
    case 'n':
        return vdlScanWord(s, "null");
    default:
        return vdlScanNumber(s);
    }
}

static bool vdlScanField(vdlScan *s, vdlReply *reply)
{
    char *key = NULL;

    if (!vdlScanString(s, &key) || !vdlScanChar(s, ':'))
        return false;
    if (strcmp(key, "v") == 0)
        return vdlScanInt(s, &reply->version);
    if (strcmp(key, "ok") == 0)
        return vdlScanBool(s, &reply->ok);
    if (strcmp(key, "code") == 0)
        return vdlScanInt(s, &reply->code);
    if (strcmp(key, "message") == 0)
        return vdlScanString(s, &reply->message);
    if (strcmp(key, "state") == 0)
        return vdlScanString(s, &reply->state);
    return vdlScanValue(s, 0);
}

/* True on success; on failure *where is the byte offset of the problem. */
bool vdlScanReply(char *body, size_t len, vdlReply *reply, size_t *where)
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
