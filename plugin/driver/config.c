/*
 * config.c: where virtdlmd listens. drvInit reads socket_path from qemu-dlm.conf (libvirt
 * conf syntax; the other keys are virtdlmd's, which validates them) and lets $VIRTDLM_SOCKET
 * override it. A missing file means the default; an unreadable one is an error.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define VDL_MAX_CONFIG_LINE_BYTES 8192

_Static_assert(sizeof(((struct sockaddr_un){ 0 }).sun_path) == VDL_SOCKET_PATH_BYTES,
               "sun_path size");

/* The only mutable global: written by drvInit, read by every request. */
char vdlSocketPath[VDL_SOCKET_PATH_BYTES] = VDL_DEFAULT_SOCKET_PATH;

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

/* drvInit's part: the default, then the file (NULL = none), then the environment. 0 / -1. */
int vdlLoadConfig(const char *configFile)
{
    const char *env = secure_getenv(VDL_SOCKET_ENV);

    memcpy(vdlSocketPath, VDL_DEFAULT_SOCKET_PATH, sizeof(VDL_DEFAULT_SOCKET_PATH));
    if (vdlReadConfig(configFile) < 0 ||
        (env && env[0] && vdlSetSocketPath(env, "$" VDL_SOCKET_ENV) < 0))
        return -1;
    return 0;
}
