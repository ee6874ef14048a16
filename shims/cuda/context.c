/* Context wrappers: the device memory a context occupies is charged to the container
 * (shim-contract.md 6.2, "contexts (primary and cuCtxCreate*)").
 *
 * The overhead is measured once per (process, device): NVML's used memory of that device before
 * and after the first context this process creates on it (primary or not), serialised per process.
 * Later contexts on the device are charged the same amount. The charge goes to `context_size`
 * (and `total`) of the own slot without being enforced: a context the driver already made exists
 * physically, so refusing it would only hide memory; allocations after it are refused instead,
 * and capacity queries clamp (free = 0) rather than fail.
 *
 * Primary context: charged when this process's retain count on the device goes 0 -> 1, released
 * when it returns to 0. cuCtxCreate*: charged per context, released by cuCtxDestroy*. Contexts made
 * before the driver is initialised or on devices outside the region pass through uncharged.
 */
#include <string.h>

#include "alloc_map.h"
#include "shim.h"

#define CTX_MAX_PLAUSIBLE (2ull << 30) /* a larger delta means other tenants moved NVML's figure */

static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t ctx_bytes[HAMI_MAX_DEVICES]; /* measured overhead + 1; 0 = not measured yet */
static int primary_refs[HAMI_MAX_DEVICES];
static uint64_t primary_charged[HAMI_MAX_DEVICES];
static CUcontext primary_ctx[HAMI_MAX_DEVICES];
static pthread_once_t nv_init_once = PTHREAD_ONCE_INIT;
static int nv_ok;

void hami_context_fork_child(void)
{
    /* The parent's contexts are not the child's (CUDA state does not survive fork). */
    pthread_mutex_init(&ctx_mu, NULL);
    memset(primary_refs, 0, sizeof(primary_refs));
    memset(primary_charged, 0, sizeof(primary_charged));
}

static void nv_init(void)
{
    hami_nvml_resolve();
    nv_ok = hami_real_nv.nvmlInit_v2 && hami_real_nv.nvmlDeviceGetHandleByUUID &&
            hami_real_nv.nvmlDeviceGetMemoryInfo && hami_real_nv.nvmlInit_v2() == NVML_SUCCESS;
    if (!nv_ok)
        LOG_INFO("NVML unavailable: context overhead is not measured (charged as 0 bytes)");
}

/* NVML's used bytes of the device at region position `pos`; -1 when unknown. */
static int64_t nv_used(int pos)
{
    pthread_once(&nv_init_once, nv_init);
    nvmlDevice_t d;
    nvmlMemory_t m;
    if (!nv_ok || hami_real_nv.nvmlDeviceGetHandleByUUID(hami_g.sh.v1->uuids[pos], &d) != NVML_SUCCESS ||
        hami_real_nv.nvmlDeviceGetMemoryInfo(d, &m) != NVML_SUCCESS)
        return -1;
    return (int64_t)m.used;
}

/* Region position of a CUDA ordinal once the driver is initialised and the region attached. */
static int dev_pos(CUdevice dev)
{
    int n = 0;
    if (!hami_real.cuDeviceGetCount || hami_real.cuDeviceGetCount(&n) != CUDA_SUCCESS || dev < 0 ||
        dev >= n || !hami_attached())
        return -1;
    return hami_pos_of_ordinal(dev);
}

/* Runs `create` (which makes a context on `pos`) and returns the overhead to charge for it,
 * measuring it if this is the process's first context on the device. Called with ctx_mu held
 * only while measuring. */
static CUresult measured_create(int pos, CUresult (*create)(void *), void *arg, uint64_t *bytes)
{
    int64_t known = __atomic_load_n(&ctx_bytes[pos], __ATOMIC_ACQUIRE);
    if (known) {
        *bytes = (uint64_t)(known - 1);
        return create(arg);
    }
    pthread_mutex_lock(&ctx_mu);
    known = __atomic_load_n(&ctx_bytes[pos], __ATOMIC_ACQUIRE);
    if (known) {
        pthread_mutex_unlock(&ctx_mu);
        *bytes = (uint64_t)(known - 1);
        return create(arg);
    }
    int64_t before = nv_used(pos);
    CUresult r = create(arg);
    int64_t after = r == CUDA_SUCCESS && before >= 0 ? nv_used(pos) : -1;
    if (after >= 0) {
        uint64_t delta = after > before ? (uint64_t)(after - before) : 0;
        if (delta > CTX_MAX_PLAUSIBLE) {
            LOG_WARN("device %d (%s): context overhead measured as %llu bytes, implausible; "
                     "charged as 0", pos, hami_g.sh.v1->uuids[pos], (unsigned long long)delta);
            delta = 0;
        }
        LOG_INFO("device %d (%s): context overhead %llu bytes", pos, hami_g.sh.v1->uuids[pos],
                 (unsigned long long)delta);
        __atomic_store_n(&ctx_bytes[pos], (int64_t)delta + 1, __ATOMIC_RELEASE);
        *bytes = delta;
    } else {
        *bytes = 0;
        if (r == CUDA_SUCCESS && before < 0)
            __atomic_store_n(&ctx_bytes[pos], 1, __ATOMIC_RELEASE); /* NVML missing: 0 bytes */
    }
    pthread_mutex_unlock(&ctx_mu);
    return r;
}

static void charge_ctx(int pos, uint64_t n)
{
    uint64_t used = 0, limit = 0;
    if (n)
        hami_charge(&hami_g.sh, pos, n, HAMI_F_CONTEXT, 0, &used, &limit);
}

static void uncharge_ctx(int pos, uint64_t n)
{
    if (n)
        hami_uncharge(&hami_g.sh, pos, n, HAMI_F_CONTEXT);
}

/* ------------------------------------------------------------------ primary contexts */

struct retain_args {
    CUcontext *pctx;
    CUdevice dev;
};

static CUresult call_retain(void *a)
{
    struct retain_args *ra = a;
    return hami_real.cuDevicePrimaryCtxRetain(ra->pctx, ra->dev);
}

static CUresult primary_retain(CUcontext *pctx, CUdevice dev);

HAMI_SHIM_API CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuDevicePrimaryCtxRetain))
        return CUDA_ERROR_NOT_SUPPORTED;
    hami_unseen_begin(); /* the context exists before its overhead is charged */
    CUresult r = primary_retain(pctx, dev);
    hami_unseen_end();
    return r;
}

static CUresult primary_retain(CUcontext *pctx, CUdevice dev)
{
    int pos;
    if (UNLIKELY(hami_g.disabled) || (pos = dev_pos(dev)) < 0)
        return hami_real.cuDevicePrimaryCtxRetain(pctx, dev);
    struct retain_args a = {pctx, dev};
    uint64_t bytes = 0;
    /* Measured (if needed) only when this retain may create the context. */
    CUresult r = __atomic_load_n(&primary_refs[pos], __ATOMIC_RELAXED) == 0
                     ? measured_create(pos, call_retain, &a, &bytes)
                     : call_retain(&a);
    if (r != CUDA_SUCCESS)
        return r;
    int64_t known = __atomic_load_n(&ctx_bytes[pos], __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&ctx_mu);
    if (primary_refs[pos]++ == 0) {
        primary_ctx[pos] = pctx ? *pctx : NULL;
        primary_charged[pos] = known ? (uint64_t)(known - 1) : bytes;
        charge_ctx(pos, primary_charged[pos]);
    }
    pthread_mutex_unlock(&ctx_mu);
    return r;
}

static CUresult primary_release(CUresult (*fn)(CUdevice), CUdevice dev)
{
    int pos;
    if (UNLIKELY(hami_g.disabled) || (pos = dev_pos(dev)) < 0)
        return fn(dev);
    pthread_mutex_lock(&ctx_mu);
    CUresult r = fn(dev);
    if (r == CUDA_SUCCESS && primary_refs[pos] > 0 && --primary_refs[pos] == 0) {
        uncharge_ctx(pos, primary_charged[pos]);
        primary_charged[pos] = 0;
        hami_limits_released(primary_ctx[pos]);
    }
    pthread_mutex_unlock(&ctx_mu);
    return r;
}

HAMI_SHIM_API CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuDevicePrimaryCtxRelease))
        return CUDA_ERROR_NOT_SUPPORTED;
    return primary_release(hami_real.cuDevicePrimaryCtxRelease, dev);
}

HAMI_SHIM_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuDevicePrimaryCtxRelease_v2))
        return CUDA_ERROR_NOT_SUPPORTED;
    return primary_release(hami_real.cuDevicePrimaryCtxRelease_v2, dev);
}

/* ------------------------------------------------------------------ cuCtxCreate* / cuCtxDestroy* */

struct create_args {
    int variant; /* 1, 2, 3, 4 */
    CUcontext *pctx;
    unsigned int flags;
    CUdevice dev;
    CUexecAffinityParam *aff;
    int naff;
    CUctxCreateParams *params;
};

static CUresult call_create(void *p)
{
    struct create_args *a = p;
    switch (a->variant) {
    case 1: return hami_real.cuCtxCreate(a->pctx, a->flags, a->dev);
    case 2: return hami_real.cuCtxCreate_v2(a->pctx, a->flags, a->dev);
    case 3: return hami_real.cuCtxCreate_v3(a->pctx, a->aff, a->naff, a->flags, a->dev);
    default: return hami_real.cuCtxCreate_v4(a->pctx, a->params, a->flags, a->dev);
    }
}

static CUresult ctx_create_inner(struct create_args *a)
{
    int pos;
    if (UNLIKELY(hami_g.disabled) || !a->pctx || (pos = dev_pos(a->dev)) < 0)
        return call_create(a);
    uint64_t bytes = 0;
    CUresult r = measured_create(pos, call_create, a, &bytes);
    if (r != CUDA_SUCCESS)
        return r;
    charge_ctx(pos, bytes);
    if (bytes && hami_map_put(HAMI_K_CTX, (uint64_t)(uintptr_t)*a->pctx, pos, bytes, NULL) != 0)
        LOG_ERROR("out of host memory tracking a context; its %llu bytes stay charged",
                  (unsigned long long)bytes);
    return r;
}

static CUresult ctx_create(struct create_args *a)
{
    hami_unseen_begin(); /* the context exists before its overhead is charged */
    CUresult r = ctx_create_inner(a);
    hami_unseen_end();
    return r;
}

#define CREATE_ENTER(name)                                 \
    hami_init();                                           \
    if (UNLIKELY(!hami_real.name))                         \
        return CUDA_ERROR_NOT_SUPPORTED

HAMI_SHIM_API CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    CREATE_ENTER(cuCtxCreate);
    struct create_args a = {.variant = 1, .pctx = pctx, .flags = flags, .dev = dev};
    return ctx_create(&a);
}

HAMI_SHIM_API CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    CREATE_ENTER(cuCtxCreate_v2);
    struct create_args a = {.variant = 2, .pctx = pctx, .flags = flags, .dev = dev};
    return ctx_create(&a);
}

HAMI_SHIM_API CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *aff, int naff,
                                      unsigned int flags, CUdevice dev)
{
    CREATE_ENTER(cuCtxCreate_v3);
    struct create_args a = {.variant = 3, .pctx = pctx, .flags = flags, .dev = dev, .aff = aff,
                            .naff = naff};
    return ctx_create(&a);
}

HAMI_SHIM_API CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params,
                                      unsigned int flags, CUdevice dev)
{
    CREATE_ENTER(cuCtxCreate_v4);
    struct create_args a = {.variant = 4, .pctx = pctx, .flags = flags, .dev = dev,
                            .params = params};
    return ctx_create(&a);
}

static CUresult ctx_destroy(CUresult (*fn)(CUcontext), CUcontext c)
{
    if (UNLIKELY(hami_g.disabled) || !c)
        return fn(c);
    struct hami_entry e;
    int known = hami_map_take(HAMI_K_CTX, (uint64_t)(uintptr_t)c, &e);
    CUresult r = fn(c);
    if (known) {
        if (r == CUDA_SUCCESS)
            uncharge_ctx(e.dev, e.size);
        else
            hami_map_put(HAMI_K_CTX, e.key, e.dev, e.size, NULL);
    }
    if (r == CUDA_SUCCESS)
        hami_limits_released(c);
    return r;
}

HAMI_SHIM_API CUresult cuCtxDestroy(CUcontext c)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuCtxDestroy))
        return CUDA_ERROR_NOT_SUPPORTED;
    return ctx_destroy(hami_real.cuCtxDestroy, c);
}

HAMI_SHIM_API CUresult cuCtxDestroy_v2(CUcontext c)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuCtxDestroy_v2))
        return CUDA_ERROR_NOT_SUPPORTED;
    return ctx_destroy(hami_real.cuCtxDestroy_v2, c);
}
