/*
 * dlm_driver.c: dlm.so, libvirt's lock-driver plugin for virtdlmd: the driver table and its
 * entry points (contracts in dlm_driver.h, the ABI libvirt declares in its internal
 * src/locking/lock_driver.h).
 *
 * Small and dumb: collect the owner and the resources libvirt hands over (owner.c), send one
 * request per call to virtdlmd on a fresh unix socket (json.c, daemon_io.c), map the reply
 * to a libvirt error (report.c). No threads, no caches, no policy. The only mutable global
 * is the socket path, written by drvInit (config.c). The REGISTER_ONLY path runs in
 * libvirt's pre-exec child: see the fork-safety rules in internal.h.
 */
#include "internal.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(vdlParam) == 32, "virLockManagerParam is 32 bytes");
_Static_assert(sizeof(vdlManager) == 16, "virLockManager is 16 bytes");
_Static_assert(sizeof(vdlDriver) == 72, "virLockDriver is 72 bytes");

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
    int ret = -1;

    if (version != VDL_LOCK_MANAGER_VERSION) {
        vdlFail("lock driver ABI version %u is not supported (dlm.so implements %u)",
                version, VDL_LOCK_MANAGER_VERSION);
        goto cleanup;
    }
    if (vdlCheckFlags(flags, 0, __func__, false) < 0)
        goto cleanup;
    if (vdlLoadConfig(configFile) < 0)
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

/* libvirt's virDomainLockFailureAction as the protocol names it; NULL for a value libvirt
 * does not define. Static strings only: the pre-exec child may not allocate for it. */
static const char *vdlActionName(int action)
{
    static const char *const names[] = {
        [VDL_LOCK_FAILURE_DEFAULT] = "default",
        [VDL_LOCK_FAILURE_POWEROFF] = "poweroff",
        [VDL_LOCK_FAILURE_RESTART] = "restart",
        [VDL_LOCK_FAILURE_PAUSE] = "pause",
        [VDL_LOCK_FAILURE_IGNORE] = "ignore",
    };

    if (action < 0 || (size_t) action >= VDL_COUNT(names))
        return NULL;
    return names[action];
}

static int vdlAcquire(vdlManager *man, const char *state, unsigned int flags, int action,
                      int *fd)
{
    static const unsigned int allowed = VDL_ACQUIRE_REGISTER_ONLY | VDL_ACQUIRE_RESTRICT;
    bool child = (flags & VDL_ACQUIRE_REGISTER_ONLY) != 0;
    vdlCall call = { child ? "register" : "acquire",
                     child ? (flags & VDL_ACQUIRE_RESTRICT) != 0 : -1, child,
                     vdlActionName(action) };
    const vdlPrivate *priv;
    int sock = -1;
    int ret = -1;

    (void) state;                       /* all lock state lives in virtdlmd */
    if (vdlCheckFlags(flags, allowed, __func__, child) < 0)
        goto cleanup;
    if (!call.action) {
        vdlError(child, VDL_ERR_INTERNAL_ERROR,
                 "unsupported lock failure action %d in function %s (libvirt's on_lockfailure "
                 "is 0..4: default, poweroff, restart, pause, ignore)", action, __func__);
        goto cleanup;
    }
    if (!(priv = vdlPrivateOf(man, __func__, child)) ||
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
    vdlCall call = { op, -1, false, NULL };
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
