/*
 * owner.c: the owner (drvNew's parameters) and the resources (drvAddResource) of one lock
 * manager, checked and copied into its vdlPrivate. No daemon contact here: the requests are
 * written from this record by json.c.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VDL_FIRST_RESOURCES 8               /* initial capacity of the resource array */

void vdlResourceClear(vdlResource *res)
{
    free(res->name);
    free(res->lockspace);
    free(res->path);
    memset(res, 0, sizeof(*res));
}

void vdlPrivateFree(vdlPrivate *priv)
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
int vdlOwnerParam(vdlPrivate *priv, const vdlParam *param)
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

int vdlDiskResource(vdlResource *res, const char *name, size_t nparams, unsigned int flags)
{
    if (vdlCheckFlags(flags, VDL_RESOURCE_READONLY | VDL_RESOURCE_SHARED, __func__, false) < 0)
        return -1;
    if (nparams)
        return vdlFail("disk %s: unexpected %zu parameters", name ? name : "(null)", nparams);
    return vdlCopyString("disk path", name, VDL_MAX_PATH_BYTES, &res->name);
}

int vdlLeaseResource(vdlResource *res, const char *name, size_t nparams,
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

/* Move *res to the end of priv's resources (VDL_MAX_RESOURCES is checked by the caller). */
int vdlAppendResource(vdlPrivate *priv, vdlResource *res)
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
