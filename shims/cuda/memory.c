/* Memory wrappers: every allocation path charged to the container (shim-contract.md 6.2),
 * capacity queries clamped to the slice (6.5).
 *
 * Pattern: charge against the container budget atomically (refusal = CUDA_ERROR_OUT_OF_MEMORY
 * before the driver is called), call the driver, then either record the allocation or roll the
 * charge back. Frees look the allocation up (O(1)), call the driver and uncharge on success; an
 * unknown pointer or handle is passed through untouched. A call the driver would refuse (no
 * context, before cuInit) is passed through so the application gets the driver's own error.
 */
#include <errno.h>
#include <string.h>

#include "alloc_map.h"
#include "shim.h"

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t last_reclaim_ns;

atomic_int hami_graphmem_pending;

void hami_memory_fork_child(void)
{
    hami_map_reset();
    pthread_mutex_init(&pool_mu, NULL);
    atomic_store(&hami_graphmem_pending, 0);
}

#define ENTER(name, args)                                                  \
    do {                                                                   \
        hami_init();                                                       \
        if (UNLIKELY(!hami_real.name))                                     \
            return CUDA_ERROR_NOT_SUPPORTED;                               \
        if (UNLIKELY(hami_g.disabled))                                     \
            return hami_real.name args;                                    \
    } while (0)

/* Device position of the current context, or -1 (then the call is passed through). */
static int current_pos(int *ordinal)
{
    CUdevice d;
    if (hami_real.cuCtxGetDevice(&d) != CUDA_SUCCESS || !hami_attached())
        return -1;
    if (ordinal)
        *ordinal = d;
    return hami_pos_of_ordinal(d);
}

/* Region position of a CUDA ordinal; -1 (pass through) while the driver is not initialised, so
 * that nothing is attached or created before cuInit. */
static int ordinal_pos(int ordinal)
{
    int n = 0;
    if (!hami_real.cuDeviceGetCount || hami_real.cuDeviceGetCount(&n) != CUDA_SUCCESS ||
        ordinal < 0 || ordinal >= n)
        return -1;
    return hami_attached() ? hami_pos_of_ordinal(ordinal) : -1;
}

/* Only on the refusal path, at most every 100 ms: releases slots of dead processes and re-reads
 * this process's unattributed memory on `pos` (shim-contract.md 6.3). 1 when usage went down. */
static int maybe_reclaim(int pos)
{
    uint64_t now = hami_monotonic_ns(), last = atomic_load(&last_reclaim_ns);
    if (now - last < 100000000ull || !atomic_compare_exchange_strong(&last_reclaim_ns, &last, now))
        return 0;
    int freed = hami_reclaim_dead(&hami_g.sh) > 0;
    return (hami_reconcile(pos, 0) < 0) | freed;
}

static int charge(int pos, uint64_t n, const char *api)
{
    uint64_t used = 0, limit = 0;
    if (hami_charge(&hami_g.sh, pos, n, HAMI_F_DATA, 1, &used, &limit) == 0)
        return 0;
    if (maybe_reclaim(pos) && hami_charge(&hami_g.sh, pos, n, HAMI_F_DATA, 1, &used, &limit) == 0)
        return 0;
    if (limit == 0)
        LOG_ERROR("%s: out of memory on device %d (%s): the device's limit value is invalid, every "
                  "allocation is refused; requested %llu bytes", api, pos, hami_g.sh.v1->uuids[pos],
                  (unsigned long long)n);
    else
        LOG_ERROR("%s: out of memory on device %d (%s): limit %llu bytes, in use %llu, requested %llu",
                  api, pos, hami_g.sh.v1->uuids[pos], (unsigned long long)limit,
                  (unsigned long long)used, (unsigned long long)n);
    return -1;
}

static void uncharge(int pos, uint64_t n)
{
    if (n)
        hami_uncharge(&hami_g.sh, pos, n, HAMI_F_DATA);
}

/* Moves a charge from `have` to `want` bytes; growing is checked against the limit. */
static int adjust(int pos, uint64_t have, uint64_t want, const char *api)
{
    if (want > have)
        return charge(pos, want - have, api);
    uncharge(pos, have - want);
    return 0;
}

static void track(int kind, uint64_t key, int pos, uint64_t size, void *aux)
{
    if (hami_map_put(kind, key, pos, size, aux) != 0)
        LOG_ERROR("out of host memory tracking an allocation; its %llu bytes stay charged",
                  (unsigned long long)size);
}

/* ------------------------------------------------------------------ linear allocations */

static CUresult linear_alloc(CUresult (*fn)(CUdeviceptr *, size_t, unsigned int), int managed,
                             CUdeviceptr *dptr, size_t size, unsigned int flags, const char *api)
{
    int pos = current_pos(NULL);
    if (pos < 0 || !dptr || size == 0)
        return managed ? fn(dptr, size, flags) : hami_real.cuMemAlloc_v2(dptr, size);
    if (charge(pos, size, api))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = managed ? fn(dptr, size, flags) : hami_real.cuMemAlloc_v2(dptr, size);
    if (r != CUDA_SUCCESS) {
        uncharge(pos, size);
        return r;
    }
    track(HAMI_K_PTR, *dptr, pos, size, NULL);
    return r;
}

HAMI_SHIM_API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size)
{
    ENTER(cuMemAlloc_v2, (dptr, size));
    return linear_alloc(NULL, 0, dptr, size, 0, "cuMemAlloc_v2");
}

HAMI_SHIM_API CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags)
{
    ENTER(cuMemAllocManaged, (dptr, size, flags));
    return linear_alloc(hami_real.cuMemAllocManaged, 1, dptr, size, flags, "cuMemAllocManaged");
}

static CUresult pitch_alloc(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                           unsigned int elem)
{
    int pos = current_pos(NULL);
    if (pos < 0 || !dptr || !pitch || width == 0 || height == 0)
        return hami_real.cuMemAllocPitch_v2(dptr, pitch, width, height, elem);
    /* Estimate with the usual 512-byte pitch alignment, then charge the returned pitch x height. */
    uint64_t est = (uint64_t)((width + 511) & ~(size_t)511) * height;
    if (charge(pos, est, "cuMemAllocPitch_v2"))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = hami_real.cuMemAllocPitch_v2(dptr, pitch, width, height, elem);
    if (r != CUDA_SUCCESS) {
        uncharge(pos, est);
        return r;
    }
    uint64_t actual = (uint64_t)*pitch * height;
    if (adjust(pos, est, actual, "cuMemAllocPitch_v2")) {
        hami_real.cuMemFree_v2(*dptr);
        uncharge(pos, est);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    track(HAMI_K_PTR, *dptr, pos, actual, NULL);
    return r;
}

HAMI_SHIM_API CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width,
                                          size_t height, unsigned int elem)
{
    ENTER(cuMemAllocPitch_v2, (dptr, pitch, width, height, elem));
    hami_unseen_begin(); /* charged an estimate until the driver returns the pitch */
    CUresult r = pitch_alloc(dptr, pitch, width, height, elem);
    hami_unseen_end();
    return r;
}

/* ------------------------------------------------------------------ pools */

/* Re-reads the pool's physical reservation and moves its charge there (6.2). With `enforce`, growth
 * beyond the limit fails (returns -1) and the charge is left unchanged. */
static int pool_reconcile(CUmemoryPool pool, int pos, int enforce, const char *api)
{
    cuuint64_t reserved = 0;
    if (!hami_real.cuMemPoolGetAttribute ||
        hami_real.cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) !=
            CUDA_SUCCESS)
        return 0;
    struct hami_entry e = {0};
    int known = hami_map_get(HAMI_K_POOL, (uint64_t)(uintptr_t)pool, &e);
    if (known)
        pos = e.dev;
    uint64_t have = known ? e.size : 0;
    if (reserved > have) {
        uint64_t used = 0, limit = 0;
        if (hami_charge(&hami_g.sh, pos, reserved - have, HAMI_F_DATA, enforce, &used, &limit)) {
            if (!enforce || !maybe_reclaim(pos) ||
                hami_charge(&hami_g.sh, pos, reserved - have, HAMI_F_DATA, 1, &used, &limit)) {
                LOG_ERROR("%s: out of memory on device %d (%s): limit %llu bytes, in use %llu, "
                          "requested %llu (pool growth)", api, pos, hami_g.sh.v1->uuids[pos],
                          (unsigned long long)limit, (unsigned long long)used,
                          (unsigned long long)(reserved - have));
                return -1;
            }
        }
    } else {
        uncharge(pos, have - reserved);
    }
    track(HAMI_K_POOL, (uint64_t)(uintptr_t)pool, pos, reserved, NULL);
    return 0;
}

static CUresult async_alloc_inner(CUresult (*fn)(CUdeviceptr *, size_t, CUstream), CUresult (*fn_pool)(CUdeviceptr *, size_t, CUmemoryPool, CUstream),
                            CUresult (*fn_free)(CUdeviceptr, CUstream), CUdeviceptr *dptr,
                            size_t size, CUmemoryPool pool, CUstream stream, const char *api)
{
    int ordinal = 0;
    int pos = current_pos(&ordinal);
    if (pos < 0 || !dptr || size == 0)
        return fn ? fn(dptr, size, stream) : fn_pool(dptr, size, pool, stream);
    if (!pool && (!hami_real.cuDeviceGetMemPool ||
                  hami_real.cuDeviceGetMemPool(&pool, ordinal) != CUDA_SUCCESS))
        pool = NULL;
    /* Refuse at once what can never fit; the exact charge is the pool's reservation afterwards. */
    if (charge(pos, size, api))
        return CUDA_ERROR_OUT_OF_MEMORY;
    uncharge(pos, size);
    CUresult r = fn ? fn(dptr, size, stream) : fn_pool(dptr, size, pool, stream);
    if (r != CUDA_SUCCESS || !pool)
        return r;
    pthread_mutex_lock(&pool_mu);
    int over = pool_reconcile(pool, pos, 1, api);
    if (over) {
        /* Roll back: free, wait for the stream, give the growth back, re-read. */
        fn_free(*dptr, stream);
        if (hami_real.cuStreamSynchronize)
            hami_real.cuStreamSynchronize(stream);
        struct hami_entry e = {0};
        uint64_t keep = hami_map_get(HAMI_K_POOL, (uint64_t)(uintptr_t)pool, &e) ? e.size : 0;
        if (hami_real.cuMemPoolTrimTo)
            hami_real.cuMemPoolTrimTo(pool, keep);
        pool_reconcile(pool, pos, 0, api);
        pthread_mutex_unlock(&pool_mu);
        *dptr = 0;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    track(HAMI_K_ASYNC, *dptr, pos, size, pool);
    pthread_mutex_unlock(&pool_mu);
    return r;
}

static CUresult async_alloc(CUresult (*fn)(CUdeviceptr *, size_t, CUstream),
                           CUresult (*fn_pool)(CUdeviceptr *, size_t, CUmemoryPool, CUstream),
                           CUresult (*fn_free)(CUdeviceptr, CUstream), CUdeviceptr *dptr,
                           size_t size, CUmemoryPool pool, CUstream stream, const char *api)
{
    hami_unseen_begin(); /* the pool grows before its reservation is re-read */
    CUresult r = async_alloc_inner(fn, fn_pool, fn_free, dptr, size, pool, stream, api);
    hami_unseen_end();
    return r;
}

HAMI_SHIM_API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream s)
{
    ENTER(cuMemAllocAsync, (dptr, size, s));
    return async_alloc(hami_real.cuMemAllocAsync, NULL, hami_real.cuMemFreeAsync, dptr, size, NULL,
                       s, "cuMemAllocAsync");
}

HAMI_SHIM_API CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream s)
{
    ENTER(cuMemAllocAsync_ptsz, (dptr, size, s));
    return async_alloc(hami_real.cuMemAllocAsync_ptsz, NULL,
                       hami_real.cuMemFreeAsync_ptsz ? hami_real.cuMemFreeAsync_ptsz
                                                     : hami_real.cuMemFreeAsync,
                       dptr, size, NULL, s, "cuMemAllocAsync_ptsz");
}

HAMI_SHIM_API CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                                               CUstream s)
{
    ENTER(cuMemAllocFromPoolAsync, (dptr, size, pool, s));
    if (!pool)
        return hami_real.cuMemAllocFromPoolAsync(dptr, size, pool, s);
    return async_alloc(NULL, hami_real.cuMemAllocFromPoolAsync, hami_real.cuMemFreeAsync, dptr,
                       size, pool, s, "cuMemAllocFromPoolAsync");
}

HAMI_SHIM_API CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t size,
                                                    CUmemoryPool pool, CUstream s)
{
    ENTER(cuMemAllocFromPoolAsync_ptsz, (dptr, size, pool, s));
    if (!pool)
        return hami_real.cuMemAllocFromPoolAsync_ptsz(dptr, size, pool, s);
    return async_alloc(NULL, hami_real.cuMemAllocFromPoolAsync_ptsz,
                       hami_real.cuMemFreeAsync_ptsz ? hami_real.cuMemFreeAsync_ptsz
                                                     : hami_real.cuMemFreeAsync,
                       dptr, size, pool, s, "cuMemAllocFromPoolAsync_ptsz");
}

/* Frees a device pointer through `fn`; works for plain and stream-ordered allocations. */
static CUresult free_ptr(CUresult (*fn)(CUdeviceptr, CUstream), CUresult (*fn_sync)(CUdeviceptr),
                         CUdeviceptr p, CUstream s)
{
    struct hami_entry e;
    int kind = 0;
    /* Take the entry before the driver frees: the address may be handed out again at once. */
    if (p && hami_map_take(HAMI_K_PTR, p, &e))
        kind = HAMI_K_PTR;
    else if (p && hami_map_take(HAMI_K_ASYNC, p, &e))
        kind = HAMI_K_ASYNC;
    CUresult r = fn ? fn(p, s) : fn_sync(p);
    if (!kind)
        return r;
    if (r != CUDA_SUCCESS) {
        track(kind, e.key, e.dev, e.size, e.aux);
        return r;
    }
    if (kind == HAMI_K_PTR) {
        uncharge(e.dev, e.size);
    } else {
        pthread_mutex_lock(&pool_mu);
        pool_reconcile((CUmemoryPool)e.aux, e.dev, 0, "cuMemFreeAsync");
        pthread_mutex_unlock(&pool_mu);
    }
    return r;
}

HAMI_SHIM_API CUresult cuMemFree_v2(CUdeviceptr p)
{
    ENTER(cuMemFree_v2, (p));
    return free_ptr(NULL, hami_real.cuMemFree_v2, p, NULL);
}

HAMI_SHIM_API CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s)
{
    ENTER(cuMemFreeAsync, (p, s));
    return free_ptr(hami_real.cuMemFreeAsync, NULL, p, s);
}

HAMI_SHIM_API CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s)
{
    ENTER(cuMemFreeAsync_ptsz, (p, s));
    return free_ptr(hami_real.cuMemFreeAsync_ptsz, NULL, p, s);
}

HAMI_SHIM_API CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep)
{
    ENTER(cuMemPoolTrimTo, (pool, keep));
    CUresult r = hami_real.cuMemPoolTrimTo(pool, keep);
    struct hami_entry e;
    if (r == CUDA_SUCCESS && hami_map_get(HAMI_K_POOL, (uint64_t)(uintptr_t)pool, &e)) {
        pthread_mutex_lock(&pool_mu);
        pool_reconcile(pool, e.dev, 0, "cuMemPoolTrimTo");
        pthread_mutex_unlock(&pool_mu);
    }
    return r;
}

HAMI_SHIM_API CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    ENTER(cuMemPoolDestroy, (pool));
    CUresult r = hami_real.cuMemPoolDestroy(pool);
    struct hami_entry e;
    if (r == CUDA_SUCCESS && hami_map_take(HAMI_K_POOL, (uint64_t)(uintptr_t)pool, &e))
        uncharge(e.dev, e.size);
    return r;
}

/* ------------------------------------------------------------------ VMM */

HAMI_SHIM_API CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size,
                                   const CUmemAllocationProp *prop, unsigned long long flags)
{
    ENTER(cuMemCreate, (h, size, prop, flags));
    /* Charged to the device the memory is created on (prop->location.id), not the current one. */
    int pos = -1;
    if (h && size && prop && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE)
        pos = ordinal_pos(prop->location.id);
    if (pos < 0)
        return hami_real.cuMemCreate(h, size, prop, flags);
    if (charge(pos, size, "cuMemCreate"))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = hami_real.cuMemCreate(h, size, prop, flags);
    if (r != CUDA_SUCCESS) {
        uncharge(pos, size);
        return r;
    }
    track(HAMI_K_VMM, *h, pos, size, NULL);
    return r;
}

HAMI_SHIM_API CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    ENTER(cuMemRelease, (h));
    struct hami_entry e;
    int known = hami_map_take(HAMI_K_VMM, h, &e);
    CUresult r = hami_real.cuMemRelease(h);
    if (known) {
        if (r == CUDA_SUCCESS)
            uncharge(e.dev, e.size);
        else
            track(HAMI_K_VMM, e.key, e.dev, e.size, NULL);
    }
    return r;
}

/* ------------------------------------------------------------------ arrays and mipmaps */

static uint64_t format_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT: return 4;
    default: return 16; /* block-compressed and packed formats: conservative */
    }
}

static uint64_t descriptor_bytes(size_t w, size_t h, size_t d, unsigned ch, CUarray_format f)
{
    return (uint64_t)(w ? w : 1) * (h ? h : 1) * (d ? d : 1) * (ch ? ch : 1) * format_bytes(f);
}

/* Charges an estimate, creates, then moves the charge to the driver's memory requirement. */
static CUresult array_create_inner(int kind, void **out, uint64_t est, const char *api,
                             CUresult (*create)(void **, const void *, unsigned), const void *desc,
                             unsigned levels)
{
    int ordinal = 0;
    int pos = current_pos(&ordinal);
    if (pos < 0 || !out || !desc)
        return create(out, desc, levels);
    if (charge(pos, est, api))
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = create(out, desc, levels);
    if (r != CUDA_SUCCESS) {
        uncharge(pos, est);
        return r;
    }
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    memset(&req, 0, sizeof(req));
    CUresult q = CUDA_ERROR_NOT_SUPPORTED;
    if (kind == HAMI_K_ARRAY && hami_real.cuArrayGetMemoryRequirements)
        q = hami_real.cuArrayGetMemoryRequirements(&req, (CUarray)*out, ordinal);
    else if (kind == HAMI_K_MIPMAP && hami_real.cuMipmappedArrayGetMemoryRequirements)
        q = hami_real.cuMipmappedArrayGetMemoryRequirements(&req, (CUmipmappedArray)*out, ordinal);
    uint64_t actual = q == CUDA_SUCCESS && req.size ? req.size : est;
    if (adjust(pos, est, actual, api)) {
        if (kind == HAMI_K_ARRAY)
            hami_real.cuArrayDestroy((CUarray)*out);
        else
            hami_real.cuMipmappedArrayDestroy((CUmipmappedArray)*out);
        uncharge(pos, est);
        *out = NULL;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    track(kind, (uint64_t)(uintptr_t)*out, pos, actual, NULL);
    return r;
}

static CUresult array_create(int kind, void **out, uint64_t est, const char *api,
                             CUresult (*create)(void **, const void *, unsigned), const void *desc,
                             unsigned levels)
{
    hami_unseen_begin(); /* charged the estimate until the driver's requirement is known */
    CUresult r = array_create_inner(kind, out, est, api, create, desc, levels);
    hami_unseen_end();
    return r;
}

static CUresult create_2d(void **out, const void *desc, unsigned levels)
{
    (void)levels;
    return hami_real.cuArrayCreate_v2((CUarray *)out, desc);
}

static CUresult create_3d(void **out, const void *desc, unsigned levels)
{
    (void)levels;
    return hami_real.cuArray3DCreate_v2((CUarray *)out, desc);
}

static CUresult create_mip(void **out, const void *desc, unsigned levels)
{
    return hami_real.cuMipmappedArrayCreate((CUmipmappedArray *)out, desc, levels);
}

HAMI_SHIM_API CUresult cuArrayCreate_v2(CUarray *out, const CUDA_ARRAY_DESCRIPTOR *d)
{
    ENTER(cuArrayCreate_v2, (out, d));
    uint64_t est = d ? descriptor_bytes(d->Width, d->Height, 1, d->NumChannels, d->Format) : 0;
    return array_create(HAMI_K_ARRAY, (void **)out, est, "cuArrayCreate_v2", create_2d, d, 0);
}

HAMI_SHIM_API CUresult cuArray3DCreate_v2(CUarray *out, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    ENTER(cuArray3DCreate_v2, (out, d));
    uint64_t est = d ? descriptor_bytes(d->Width, d->Height, d->Depth, d->NumChannels, d->Format) : 0;
    return array_create(HAMI_K_ARRAY, (void **)out, est, "cuArray3DCreate_v2", create_3d, d, 0);
}

HAMI_SHIM_API CUresult cuMipmappedArrayCreate(CUmipmappedArray *out, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                              unsigned int levels)
{
    ENTER(cuMipmappedArrayCreate, (out, d, levels));
    uint64_t est = 0;
    for (unsigned l = 0; d && l < levels && l < 32; l++) {
        size_t w = d->Width >> l, h = d->Height >> l, z = d->Depth >> l;
        est += descriptor_bytes(w ? w : 1, d->Height ? (h ? h : 1) : 0, d->Depth ? (z ? z : 1) : 0,
                                d->NumChannels, d->Format);
    }
    return array_create(HAMI_K_MIPMAP, (void **)out, est, "cuMipmappedArrayCreate", create_mip, d,
                        levels);
}

static CUresult destroy_obj(int kind, uint64_t key, CUresult r_of_call(void *), void *obj)
{
    struct hami_entry e;
    int known = hami_map_take(kind, key, &e);
    CUresult r = r_of_call(obj);
    if (known) {
        if (r == CUDA_SUCCESS)
            uncharge(e.dev, e.size);
        else
            track(kind, e.key, e.dev, e.size, NULL);
    }
    return r;
}

static CUresult call_array_destroy(void *a) { return hami_real.cuArrayDestroy((CUarray)a); }
static CUresult call_mip_destroy(void *m) { return hami_real.cuMipmappedArrayDestroy((CUmipmappedArray)m); }

HAMI_SHIM_API CUresult cuArrayDestroy(CUarray a)
{
    ENTER(cuArrayDestroy, (a));
    return destroy_obj(HAMI_K_ARRAY, (uint64_t)(uintptr_t)a, call_array_destroy, a);
}

HAMI_SHIM_API CUresult cuMipmappedArrayDestroy(CUmipmappedArray m)
{
    ENTER(cuMipmappedArrayDestroy, (m));
    return destroy_obj(HAMI_K_MIPMAP, (uint64_t)(uintptr_t)m, call_mip_destroy, m);
}

/* ------------------------------------------------------------------ capacity */

/* total = min(limit, physical); free = max(0, min(real free, total - usage)). */
static int clamp(int pos, uint64_t *free_b, uint64_t *total_b)
{
    uint64_t limit = hami_limit(&hami_g.sh, pos);
    int invalid = hami_g.sh.fail_closed[pos] ||
                  (atomic_load(&hami_g.sh.ext->dev[pos].flags) & HAMI_DEV_LIMIT_INVALID);
    if (!limit && !invalid)
        return 0;
    uint64_t total = invalid ? 0 : limit < *total_b ? limit : *total_b;
    uint64_t used = hami_usage(&hami_g.sh, pos);
    uint64_t room = total > used ? total - used : 0;
    *total_b = total;
    if (free_b)
        *free_b = *free_b < room ? *free_b : room;
    return 1;
}

HAMI_SHIM_API CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b)
{
    ENTER(cuMemGetInfo_v2, (free_b, total_b));
    CUresult r = hami_real.cuMemGetInfo_v2(free_b, total_b);
    if (r != CUDA_SUCCESS || !free_b || !total_b)
        return r;
    int pos = current_pos(NULL);
    if (pos >= 0) {
        uint64_t f = *free_b, t = *total_b;
        if (clamp(pos, &f, &t)) {
            *free_b = f;
            *total_b = t;
        }
    }
    return r;
}

HAMI_SHIM_API CUresult cuMemGetInfo(unsigned int *free_b, unsigned int *total_b)
{
    ENTER(cuMemGetInfo, (free_b, total_b));
    /* The 32-bit ABI: clamp the 64-bit values, then narrow as the driver does. */
    size_t f = 0, t = 0;
    CUresult r = hami_real.cuMemGetInfo_v2 ? hami_real.cuMemGetInfo_v2(&f, &t)
                                           : hami_real.cuMemGetInfo(free_b, total_b);
    if (r != CUDA_SUCCESS || !hami_real.cuMemGetInfo_v2 || !free_b || !total_b)
        return r;
    int pos = current_pos(NULL);
    uint64_t f64 = f, t64 = t;
    if (pos >= 0)
        clamp(pos, &f64, &t64);
    *free_b = f64 > 0xffffffffu ? 0xffffffffu : (unsigned)f64;
    *total_b = t64 > 0xffffffffu ? 0xffffffffu : (unsigned)t64;
    return r;
}

HAMI_SHIM_API CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    ENTER(cuDeviceTotalMem_v2, (bytes, dev));
    CUresult r = hami_real.cuDeviceTotalMem_v2(bytes, dev);
    if (r != CUDA_SUCCESS || !bytes)
        return r;
    int pos = ordinal_pos(dev);
    uint64_t t = *bytes;
    if (pos >= 0 && clamp(pos, NULL, &t))
        *bytes = t;
    return r;
}

HAMI_SHIM_API CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    ENTER(cuDeviceTotalMem, (bytes, dev));
    size_t t = 0;
    CUresult r = hami_real.cuDeviceTotalMem_v2 ? hami_real.cuDeviceTotalMem_v2(&t, dev)
                                               : hami_real.cuDeviceTotalMem(bytes, dev);
    if (r != CUDA_SUCCESS || !hami_real.cuDeviceTotalMem_v2 || !bytes)
        return r;
    int pos = ordinal_pos(dev);
    uint64_t t64 = t;
    if (pos >= 0)
        clamp(pos, NULL, &t64);
    *bytes = t64 > 0xffffffffu ? 0xffffffffu : (unsigned)t64;
    return r;
}

/* ------------------------------------------------------------------ graph memory */

/* A device's graph memory pool (allocation nodes of instantiated graphs, stream-ordered
 * allocations captured into graphs) is charged as its CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT
 * (shim-contract.md 6.2), re-read after instantiation, after the first launch of a graph with
 * memory nodes, after its destruction and after cuDeviceGraphMemTrim; all under pool_mu. */

static int graph_ord[HAMI_MAX_DEVICES]; /* CUDA ordinal + 1 of each position's pool; 0 = none */

static int graph_attr(int ordinal, CUgraphMem_attribute a, uint64_t *v)
{
    cuuint64_t x = 0;
    if (hami_real.cuDeviceGetGraphMemAttribute(ordinal, a, &x) != CUDA_SUCCESS)
        return -1;
    *v = x;
    return 0;
}

/* Moves the charge of position `pos`'s graph pool to the pool's reservation. With `enforce`,
 * growth beyond the limit returns -1 (one log line) and leaves the charge unchanged. */
static int graphpool_reconcile(int pos, int enforce, const char *api)
{
    uint64_t reserved = 0;
    if (!graph_ord[pos] || graph_attr(graph_ord[pos] - 1, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT,
                                      &reserved))
        return 0;
    struct hami_entry e = {0};
    uint64_t have = hami_map_get(HAMI_K_GRAPHPOOL, (uint64_t)pos, &e) ? e.size : 0;
    if (reserved > have) {
        uint64_t used = 0, limit = 0;
        if (enforce ? charge(pos, reserved - have, api)
                    : hami_charge(&hami_g.sh, pos, reserved - have, HAMI_F_DATA, 0, &used, &limit))
            return -1;
    } else {
        uncharge(pos, have - reserved);
    }
    track(HAMI_K_GRAPHPOOL, (uint64_t)pos, pos, reserved, NULL);
    return 0;
}

/* Bytes of the graph's memory allocation nodes per region position; returns the position mask. */
static unsigned graph_footprint(CUgraph g, uint64_t fp[HAMI_MAX_DEVICES])
{
    size_t n = 0;
    if (!hami_real.cuGraphGetNodes || !hami_real.cuGraphNodeGetType ||
        !hami_real.cuGraphMemAllocNodeGetParams || hami_real.cuGraphGetNodes(g, NULL, &n) != CUDA_SUCCESS ||
        n == 0)
        return 0;
    CUgraphNode *nodes = calloc(n, sizeof(*nodes));
    if (!nodes)
        return 0;
    unsigned mask = 0;
    if (hami_real.cuGraphGetNodes(g, nodes, &n) == CUDA_SUCCESS) {
        for (size_t i = 0; i < n; i++) {
            CUgraphNodeType t;
            CUDA_MEM_ALLOC_NODE_PARAMS p;
            if (!nodes[i] || hami_real.cuGraphNodeGetType(nodes[i], &t) != CUDA_SUCCESS ||
                t != CU_GRAPH_NODE_TYPE_MEM_ALLOC ||
                hami_real.cuGraphMemAllocNodeGetParams(nodes[i], &p) != CUDA_SUCCESS ||
                p.poolProps.location.type != CU_MEM_LOCATION_TYPE_DEVICE)
                continue;
            int pos = ordinal_pos(p.poolProps.location.id);
            if (pos < 0)
                continue;
            fp[pos] += p.bytesize;
            graph_ord[pos] = p.poolProps.location.id + 1;
            mask |= 1u << pos;
        }
    }
    free(nodes);
    return mask;
}

static CUresult graph_mem_instantiate(CUresult (*call)(void *), void *arg, CUgraphExec *e,
                                      CUgraph g, const char *api)
{
    if (hami_g.disabled || !e || !g || !hami_real.cuDeviceGetGraphMemAttribute)
        return call(arg);
    uint64_t fp[HAMI_MAX_DEVICES] = {0};
    pthread_mutex_lock(&pool_mu);
    unsigned mask = graph_footprint(g, fp);
    if (!mask) {
        pthread_mutex_unlock(&pool_mu);
        return call(arg);
    }
    /* Refuse at once what cannot fit: the pool grows by what its reservation cannot hold. */
    for (int pos = 0; pos < HAMI_MAX_DEVICES; pos++) {
        if (!(mask & (1u << pos)))
            continue;
        uint64_t used = 0, reserved = 0;
        graphpool_reconcile(pos, 0, api);
        if (graph_attr(graph_ord[pos] - 1, CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT, &used) ||
            graph_attr(graph_ord[pos] - 1, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &reserved))
            continue;
        uint64_t need = used + fp[pos], grow = need > reserved ? need - reserved : 0;
        if (grow && charge(pos, grow, api)) {
            pthread_mutex_unlock(&pool_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        uncharge(pos, grow);
    }
    CUresult r = call(arg);
    if (r != CUDA_SUCCESS || !*e) {
        pthread_mutex_unlock(&pool_mu);
        return r;
    }
    int over = 0;
    for (int pos = 0; pos < HAMI_MAX_DEVICES; pos++)
        if ((mask & (1u << pos)) && graphpool_reconcile(pos, 1, api))
            over = 1;
    if (over) {
        /* Another process took the room meanwhile: roll back, give the growth back. */
        hami_real.cuGraphExecDestroy(*e);
        *e = NULL;
        for (int pos = 0; pos < HAMI_MAX_DEVICES; pos++) {
            if (!(mask & (1u << pos)))
                continue;
            if (hami_real.cuDeviceGraphMemTrim)
                hami_real.cuDeviceGraphMemTrim(graph_ord[pos] - 1);
            graphpool_reconcile(pos, 0, api);
        }
        pthread_mutex_unlock(&pool_mu);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    track(HAMI_K_GRAPHMEM, (uint64_t)(uintptr_t)*e, 0, 1, (void *)(uintptr_t)mask);
    atomic_fetch_add(&hami_graphmem_pending, 1);
    pthread_mutex_unlock(&pool_mu);
    return r;
}

CUresult hami_graph_mem_instantiate(CUresult (*call)(void *), void *arg, CUgraphExec *e, CUgraph g,
                                    const char *api)
{
    hami_unseen_begin(); /* the graph pool grows before its reservation is re-read */
    CUresult r = graph_mem_instantiate(call, arg, e, g, api);
    hami_unseen_end();
    return r;
}

static void graph_reconcile_mask(unsigned mask, const char *api)
{
    for (int pos = 0; pos < HAMI_MAX_DEVICES; pos++)
        if (mask & (1u << pos))
            graphpool_reconcile(pos, 0, api);
}

/* A driver that maps graph memory at the first launch (not at instantiation) grows the pool
 * there: re-read once per executable graph. */
void hami_graph_mem_launched(CUgraphExec x)
{
    struct hami_entry e;
    pthread_mutex_lock(&pool_mu);
    if (hami_map_get(HAMI_K_GRAPHMEM, (uint64_t)(uintptr_t)x, &e) && e.size) {
        atomic_fetch_sub(&hami_graphmem_pending, 1);
        track(HAMI_K_GRAPHMEM, e.key, 0, 0, e.aux);
        graph_reconcile_mask((unsigned)(uintptr_t)e.aux, "cuGraphLaunch");
    }
    pthread_mutex_unlock(&pool_mu);
}

CUresult hami_graph_mem_destroy(CUgraphExec x)
{
    struct hami_entry e;
    pthread_mutex_lock(&pool_mu);
    int known = x && !hami_g.disabled && hami_map_take(HAMI_K_GRAPHMEM, (uint64_t)(uintptr_t)x, &e);
    CUresult r = hami_real.cuGraphExecDestroy(x);
    if (known) {
        if (r != CUDA_SUCCESS) {
            track(HAMI_K_GRAPHMEM, e.key, 0, e.size, e.aux);
        } else {
            if (e.size)
                atomic_fetch_sub(&hami_graphmem_pending, 1);
            /* the pool keeps the memory reserved until trimmed: usually no change */
            graph_reconcile_mask((unsigned)(uintptr_t)e.aux, "cuGraphExecDestroy");
        }
    }
    pthread_mutex_unlock(&pool_mu);
    return r;
}

HAMI_SHIM_API CUresult cuDeviceGraphMemTrim(CUdevice dev)
{
    ENTER(cuDeviceGraphMemTrim, (dev));
    CUresult r = hami_real.cuDeviceGraphMemTrim(dev);
    int pos;
    if (r == CUDA_SUCCESS && hami_real.cuDeviceGetGraphMemAttribute && (pos = ordinal_pos(dev)) >= 0) {
        pthread_mutex_lock(&pool_mu);
        graph_ord[pos] = dev + 1;
        graphpool_reconcile(pos, 0, "cuDeviceGraphMemTrim");
        pthread_mutex_unlock(&pool_mu);
    }
    return r;
}
