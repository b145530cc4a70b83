/*
 * dlm_driver.h: the libvirt lock-driver plugin ABI as dlm.so implements it.
 *
 * The ABI's home is libvirt's src/locking/lock_driver.h (virLockDriver, virLockManager,
 * virLockManagerParam and their flags), an internal header that no -dev package installs.
 * So it is declared again here, with the same layout and values (checked against libvirt
 * 9.0's own lockd.so, whose virLockDriverImpl is a 72-byte object) and without libvirt's
 * code. Every name carries the prefix vdl/VDL except the one exported symbol,
 * virLockDriverImpl, whose name libvirt looks up with dlsym() (src/locking/lock_manager.c).
 *
 * x86_64 layout: param 32 bytes, manager 16 bytes, driver table 72 bytes.
 */
#ifndef VDL_DLM_DRIVER_H
#define VDL_DLM_DRIVER_H

#include <stddef.h>

#define VDL_LOCK_MANAGER_VERSION 1000000u   /* 1.0.0; libvirt passes it to drvInit */

/* virLockDriver.flags */
#define VDL_DRIVER_USES_STATE (1u << 0)

/* drvNew: object type, flags */
#define VDL_OBJECT_TYPE_DOMAIN 0u
#define VDL_NEW_STARTED (1u << 0)           /* a freshly started domain (pre-exec child) */

/* drvAddResource: resource type, flags (no flag = exclusive read/write) */
#define VDL_RESOURCE_TYPE_DISK 0u
#define VDL_RESOURCE_TYPE_LEASE 1u
#define VDL_RESOURCE_READONLY (1u << 0)
#define VDL_RESOURCE_SHARED (1u << 1)

/* drvAcquire flags */
#define VDL_ACQUIRE_REGISTER_ONLY (1u << 0)
#define VDL_ACQUIRE_RESTRICT (1u << 1)

/* drvAcquire action: the domain's <on_lockfailure> (libvirt's virDomainLockFailureAction) */
#define VDL_LOCK_FAILURE_DEFAULT 0
#define VDL_LOCK_FAILURE_POWEROFF 1
#define VDL_LOCK_FAILURE_RESTART 2
#define VDL_LOCK_FAILURE_PAUSE 3
#define VDL_LOCK_FAILURE_IGNORE 4

/* vdlParam.type */
enum {
    VDL_PARAM_STRING = 0,
    VDL_PARAM_CSTRING = 1,
    VDL_PARAM_INT = 2,
    VDL_PARAM_LONG = 3,
    VDL_PARAM_UINT = 4,
    VDL_PARAM_ULONG = 5,
    VDL_PARAM_DOUBLE = 6,
    VDL_PARAM_UUID = 7,
};

/* Public libvirt error numbers (virterror.h) the driver raises. */
#define VDL_FROM_LOCKING 42
#define VDL_ERR_INTERNAL_ERROR 1
#define VDL_ERR_OPERATION_FAILED 9
#define VDL_ERR_RESOURCE_BUSY 87

typedef struct {                    /* 32 bytes */
    int type;                       /* @0: VDL_PARAM_* */
    const char *key;                /* @8 */
    union {                         /* @16, 16 bytes */
        int iv;
        long long l;
        unsigned int ui;
        unsigned long long ul;
        double d;
        char *str;
        const char *cstr;
        unsigned char uuid[16];
    } value;
} vdlParam;

typedef struct vdlDriver vdlDriver;

typedef struct {                    /* 16 bytes, allocated and freed by libvirt */
    vdlDriver *driver;              /* @0 */
    void *privateData;              /* @8: ours, set by drvNew, cleared by drvFree */
} vdlManager;

/*
 * drvInit: check the ABI version (must be VDL_LOCK_MANAGER_VERSION) and flags (must be 0),
 * read socket_path from configFile (NULL or absent file = default; unreadable = error),
 * then let VIRTDLM_SOCKET override it. Never contacts virtdlmd. 0 / -1.
 */
typedef int (*vdlInitFunc)(unsigned int version, const char *configFile, unsigned int flags);

/* drvDeinit: nothing to release; always 0 (returning -1 would keep the plugin loaded). */
typedef int (*vdlDeinitFunc)(void);

/*
 * drvNew: type must be DOMAIN, flags only NEW_STARTED. Params uuid (UUID), name (STRING),
 * id (UINT), pid (UINT) are required, uri (CSTRING, may be NULL) is accepted and unused;
 * any other key or type is refused. On success man->privateData holds the owner; on
 * failure nothing is left allocated (libvirt does not call drvFree then). 0 / -1.
 */
typedef int (*vdlNewFunc)(vdlManager *man, unsigned int type, size_t nparams,
                          vdlParam *params, unsigned int flags);

/* drvFree: free man->privateData (may be NULL) and set it to NULL. */
typedef void (*vdlFreeFunc)(vdlManager *man);

/*
 * drvAddResource: remember one resource, no daemon contact.
 * DISK: name = image path, flags READONLY|SHARED, no params.
 * LEASE: name = key, flags 0, params path (STRING), offset (ULONG), lockspace (STRING,
 * optional). At most VDL_MAX_RESOURCES per manager; paths <= 4096 bytes. 0 / -1.
 */
typedef int (*vdlAddResourceFunc)(vdlManager *man, unsigned int type, const char *name,
                                  size_t nparams, vdlParam *params, unsigned int flags);

/*
 * drvAcquire: flags REGISTER_ONLY|RESTRICT; state is ignored. action is the domain's
 * <on_lockfailure> (VDL_LOCK_FAILURE_*), sent with both requests as "action": "default",
 * "poweroff", "restart", "pause" or "ignore"; virtdlmd applies it if this node's locks are lost
 * (libvirt never acts on it itself). Any other value is refused before any connection.
 * REGISTER_ONLY (libvirt's pre-exec child, fork-safe): send "register" with
 * restrict = RESTRICT on a fresh socket WITHOUT close-on-exec; on success the socket stays
 * open for QEMU to inherit and is stored in *fd (if fd is not NULL). Errors go to stderr.
 * Otherwise (libvirtd): send "acquire" on a fresh close-on-exec socket, then close it.
 * 0 / -1; a refusal is reported with the daemon's message (a daemon that refuses the field
 * "action" is reported as older than this driver).
 */
typedef int (*vdlAcquireFunc)(vdlManager *man, const char *state, unsigned int flags,
                              int action, int *fd);

/* drvRelease: flags 0; send "release" with the manager's resources; *state = NULL. */
typedef int (*vdlReleaseFunc)(vdlManager *man, char **state, unsigned int flags);

/*
 * drvInquire: flags 0; send "inquire"; *state = a malloc'd copy of the daemon's state
 * (libvirt frees it with free()), or NULL when the daemon returns "".
 */
typedef int (*vdlInquireFunc)(vdlManager *man, char **state, unsigned int flags);

struct vdlDriver {                  /* 72 bytes */
    unsigned int version;           /* @0: VDL_LOCK_MANAGER_VERSION */
    unsigned int flags;             /* @4: 0 (no USES_STATE: all state lives in virtdlmd) */
    vdlInitFunc drvInit;            /* @8 */
    vdlDeinitFunc drvDeinit;        /* @16 */
    vdlNewFunc drvNew;              /* @24 */
    vdlFreeFunc drvFree;            /* @32 */
    vdlAddResourceFunc drvAddResource; /* @40 */
    vdlAcquireFunc drvAcquire;      /* @48 */
    vdlReleaseFunc drvRelease;      /* @56 */
    vdlInquireFunc drvInquire;      /* @64 */
};

/* The one exported symbol: libvirt dlsym()s this data object. */
extern __attribute__((visibility("default"))) const vdlDriver virLockDriverImpl;

#endif /* VDL_DLM_DRIVER_H */
