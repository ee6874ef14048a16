/* Device memory the API calls do not show (shim-contract.md 6.2, 6.3).
 *
 * cuCtxSetLimit: the malloc heap and the printf FIFO are charged directly at their configured size
 * (beyond the value the context had when first set, which its measured overhead already covers)
 * into `context_size`, refused with CUDA_ERROR_OUT_OF_MEMORY before the driver is called when
 * they do not fit; released when the context is destroyed (primary: last release).
 *
 * Everything else the driver takes on its own (module and library images, thread stacks of
 * CU_LIMIT_STACK_SIZE x resident threads, lazily loaded kernels, workspaces) is found by
 * reconciliation: this process's used memory as NVML reports it
 * (nvmlDeviceGetComputeRunningProcesses_v3, matched by the slot's host PID when the monitor has
 * filled it, else by our PID) minus what the shim charged it for otherwise; a positive difference
 * is this process's `module_size`, counted toward the limit (not refused: the memory exists).
 * Re-read right after cuModuleLoad* / cuModuleUnload, cuLibraryLoad* / cuLibraryUnload,
 * cuCtxSetLimit and context destruction, before an allocation is refused, and by the watcher
 * every second on devices where this process holds memory under a limit (applied only when two
 * readings 2 ms apart agree, so an allocation or free in flight in another thread, charged but
 * not yet made or freed but not yet uncharged, is not mistaken for unattributed memory).
 */
#include <string.h>
#include <time.h>

#include "alloc_map.h"
#include "shim.h"

static pthread_mutex_t recon_mu = PTHREAD_MUTEX_INITIALIZER;
static nvmlDevice_t nv_dev[HAMI_MAX_DEVICES];
static int nv_seen[HAMI_MAX_DEVICES]; /* NVML listed this process on the device at least once */
static int nv_state;                  /* 0 not tried, 1 usable, -1 unavailable */
static int stopped;                   /* the process detached (exit): nothing more to reconcile */
/* recon_mu guards all of the above and the watcher's reads of hami_g.sh.me (the destructor clears
 * it under recon_mu: hami_reconcile_detach). */

void hami_reconcile_fork_child(void)
{
    pthread_mutex_init(&recon_mu, NULL);
    memset(nv_seen, 0, sizeof(nv_seen));
}

static int nv_ready(void)
{
    if (nv_state == 0) {
        hami_nvml_resolve();
        nv_state = hami_real_nv.nvmlInit_v2 && hami_real_nv.nvmlDeviceGetHandleByUUID &&
                           hami_real_nv.nvmlDeviceGetComputeRunningProcesses_v3 &&
                           hami_real_nv.nvmlInit_v2() == NVML_SUCCESS
                       ? 1
                       : -1;
        if (nv_state < 0)
            LOG_INFO("NVML per-process memory unavailable: module images and stacks are not "
                     "charged");
    }
    return nv_state > 0;
}

/* NVML's used bytes of this process on position `pos`, or -1 when unknown. recon_mu held. */
static int64_t nv_process_used(int pos)
{
    if (!nv_ready() || (!nv_dev[pos] && hami_real_nv.nvmlDeviceGetHandleByUUID(
                                            hami_g.sh.v1->uuids[pos], &nv_dev[pos]) != NVML_SUCCESS))
        return -1;
    nvmlProcessInfo_t infos[64];
    unsigned n = 64;
    if (hami_real_nv.nvmlDeviceGetComputeRunningProcesses_v3(nv_dev[pos], &n, infos) != NVML_SUCCESS)
        return -1;
    int32_t host = atomic_load_explicit(&hami_g.sh.me->hostpid, memory_order_relaxed);
    unsigned want = (unsigned)(host ? host : hami_g.pid);
    for (unsigned i = 0; i < n && i < 64; i++) {
        if (infos[i].pid != want)
            continue;
        if (infos[i].usedGpuMemory == (unsigned long long)NVML_VALUE_NOT_AVAILABLE)
            return -1;
        nv_seen[pos] = 1;
        return (int64_t)infos[i].usedGpuMemory;
    }
    /* not listed: no memory, if NVML has listed us before; else NVML cannot see us (PID) */
    return nv_seen[pos] ? 0 : -1;
}

_Atomic uint64_t hami_unseen_open, hami_unseen_gen;

/* Unattributed bytes of this process on `pos`, or -1 when unknown (also when the reading overlaps
 * a window in which the driver holds memory not charged yet). recon_mu held. */
static int64_t unattributed(int pos)
{
    uint64_t g1 = atomic_load(&hami_unseen_gen), o1 = atomic_load(&hami_unseen_open);
    /* a charge or uncharge by another thread between the NVML reading and the read of the
     * charges (an allocation or free completing in between) would make them disagree */
    uint64_t c1 = atomic_load(&hami_g.sh.charge_gen);
    int64_t used = o1 ? -1 : nv_process_used(pos);
    if (used < 0)
        return -1;
    const struct hami_dev_usage *u = &hami_g.sh.me->used[pos];
    uint64_t mod = atomic_load(&u->module_size), total = atomic_load(&u->total);
    if (atomic_load(&hami_unseen_open) || atomic_load(&hami_unseen_gen) != g1 ||
        atomic_load(&hami_g.sh.charge_gen) != c1)
        return -1;
    uint64_t other = total > mod ? total - mod : 0;
    return (uint64_t)used > other ? (int64_t)((uint64_t)used - other) : 0;
}

void hami_reconcile_detach(void)
{
    pthread_mutex_lock(&recon_mu);
    stopped = 1;
    hami_region_detach(&hami_g.sh);
    pthread_mutex_unlock(&recon_mu);
}

int hami_reconcile(int pos, int agree)
{
    if (hami_g.disabled || pos < 0 || pos >= HAMI_MAX_DEVICES || !hami_attached())
        return 0;
    pthread_mutex_lock(&recon_mu);
    if (stopped || !hami_g.sh.me) {
        pthread_mutex_unlock(&recon_mu);
        return 0;
    }
    int changed = 0;
    int64_t target = unattributed(pos);
    if (target >= 0 && agree) {
        struct timespec ts = {0, 2000000L};
        nanosleep(&ts, NULL);
        if (unattributed(pos) != target)
            target = -1;
    }
    if (target >= 0) {
        uint64_t old = hami_set_field(&hami_g.sh, pos, HAMI_F_MODULE, (uint64_t)target);
        changed = (uint64_t)target > old ? 1 : (uint64_t)target < old ? -1 : 0;
        if (changed)
            LOG_DEBUG("device %d: unattributed device memory %llu -> %llu bytes (module_size)", pos,
                      (unsigned long long)old, (unsigned long long)target);
    }
    pthread_mutex_unlock(&recon_mu);
    return changed;
}

/* Positions to re-read: under a limit and where this process holds memory or NVML listed it. */
static unsigned positions(int need_limit)
{
    unsigned mask = 0;
    pthread_mutex_lock(&recon_mu);
    struct hami_region_v1 *v1 = hami_g.sh.v1;
    struct hami_proc_slot *me = hami_g.sh.me;
    for (int pos = 0; !stopped && v1 && me && pos < (int)v1->device_num && pos < HAMI_MAX_DEVICES;
         pos++)
        if ((!need_limit || v1->limit[pos]) && (atomic_load(&me->used[pos].total) || nv_seen[pos]))
            mask |= 1u << pos;
    pthread_mutex_unlock(&recon_mu);
    return mask;
}

static void reconcile_mask(unsigned mask, int agree)
{
    for (int pos = 0; pos < HAMI_MAX_DEVICES; pos++)
        if (mask & (1u << pos))
            hami_reconcile(pos, agree);
}

void hami_reconcile_periodic(void) { reconcile_mask(positions(1), 1); }

/* After the driver took or gave back memory we cannot attribute: the current device, or every
 * device of the region when there is no current context (libraries are context-independent). */
static void reconcile_now(void)
{
    CUdevice d;
    if (hami_real.cuCtxGetDevice(&d) == CUDA_SUCCESS) {
        if (hami_attached())
            hami_reconcile(hami_pos_of_ordinal(d), 0);
        return;
    }
    if (!hami_attached())
        return;
    for (int pos = 0; pos < (int)hami_g.sh.v1->device_num && pos < HAMI_MAX_DEVICES; pos++)
        hami_reconcile(pos, 0);
}

#define ENTER(name, args)                                                  \
    do {                                                                   \
        hami_init();                                                       \
        if (UNLIKELY(!hami_real.name))                                     \
            return CUDA_ERROR_NOT_SUPPORTED;                               \
        if (UNLIKELY(hami_g.disabled))                                     \
            return hami_real.name args;                                    \
    } while (0)

/* ------------------------------------------------------------------ cuCtxSetLimit */

static uint64_t limit_key(CUcontext c, CUlimit l) { return (uint64_t)(uintptr_t)c * 8 + (uint64_t)l; }

HAMI_SHIM_API CUresult cuCtxSetLimit(CUlimit limit, size_t value)
{
    ENTER(cuCtxSetLimit, (limit, value));
    if (limit != CU_LIMIT_MALLOC_HEAP_SIZE && limit != CU_LIMIT_PRINTF_FIFO_SIZE) {
        CUresult r = hami_real.cuCtxSetLimit(limit, value);
        if (r == CUDA_SUCCESS && limit == CU_LIMIT_STACK_SIZE)
            reconcile_now();
        return r;
    }
    CUcontext c = NULL;
    CUdevice d;
    int pos;
    if (!hami_real.cuCtxGetCurrent || hami_real.cuCtxGetCurrent(&c) != CUDA_SUCCESS || !c ||
        hami_real.cuCtxGetDevice(&d) != CUDA_SUCCESS || !hami_attached() ||
        (pos = hami_pos_of_ordinal(d)) < 0)
        return hami_real.cuCtxSetLimit(limit, value);
    uint64_t key = limit_key(c, limit);
    struct hami_entry e;
    uint64_t have = 0, base = 0;
    if (hami_map_get(HAMI_K_LIMIT, key, &e)) {
        have = e.size;
        base = (uint64_t)(uintptr_t)e.aux;
    } else {
        size_t cur = 0;
        if (hami_real.cuCtxGetLimit && hami_real.cuCtxGetLimit(&cur, limit) == CUDA_SUCCESS)
            base = cur; /* the context's initial value is part of its measured overhead */
    }
    uint64_t want = value > base ? value - base : 0;
    if (want > have) {
        uint64_t used = 0, lim = 0;
        if (hami_charge(&hami_g.sh, pos, want - have, HAMI_F_CONTEXT, 1, &used, &lim)) {
            LOG_ERROR("cuCtxSetLimit: out of memory on device %d (%s): limit %llu bytes, in use %llu, "
                      "requested %llu (%s)", pos, hami_g.sh.v1->uuids[pos], (unsigned long long)lim,
                      (unsigned long long)used, (unsigned long long)(want - have),
                      limit == CU_LIMIT_MALLOC_HEAP_SIZE ? "malloc heap" : "printf FIFO");
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    CUresult r = hami_real.cuCtxSetLimit(limit, value);
    if (r != CUDA_SUCCESS) {
        if (want > have)
            hami_uncharge(&hami_g.sh, pos, want - have, HAMI_F_CONTEXT);
        return r;
    }
    if (want < have)
        hami_uncharge(&hami_g.sh, pos, have - want, HAMI_F_CONTEXT);
    if (hami_map_put(HAMI_K_LIMIT, key, pos, want, (void *)(uintptr_t)base) != 0)
        LOG_ERROR("out of host memory tracking a context limit; its %llu bytes stay charged",
                  (unsigned long long)want);
    return r;
}

void hami_limits_released(CUcontext c)
{
    static const CUlimit charged[] = {CU_LIMIT_MALLOC_HEAP_SIZE, CU_LIMIT_PRINTF_FIFO_SIZE};
    if (!c || !hami_attached())
        return;
    for (size_t i = 0; i < sizeof(charged) / sizeof(charged[0]); i++) {
        struct hami_entry e;
        if (hami_map_take(HAMI_K_LIMIT, limit_key(c, charged[i]), &e) && e.size)
            hami_uncharge(&hami_g.sh, e.dev, e.size, HAMI_F_CONTEXT);
    }
    /* the context's stacks went with it */
    reconcile_mask(positions(0), 0);
}

/* ------------------------------------------------------------------ modules and libraries */

#define IMAGE_WRAPPER(name, params, args)                  \
    HAMI_SHIM_API CUresult name params                     \
    {                                                      \
        ENTER(name, args);                                 \
        CUresult r = hami_real.name args;                  \
        if (r == CUDA_SUCCESS)                             \
            reconcile_now();                               \
        return r;                                          \
    }

IMAGE_WRAPPER(cuModuleLoad, (CUmodule * m, const char *f), (m, f))
IMAGE_WRAPPER(cuModuleLoadData, (CUmodule * m, const void *img), (m, img))
IMAGE_WRAPPER(cuModuleLoadDataEx,
              (CUmodule * m, const void *img, unsigned int n, CUjit_option *o, void **v),
              (m, img, n, o, v))
IMAGE_WRAPPER(cuModuleLoadFatBinary, (CUmodule * m, const void *fat), (m, fat))
IMAGE_WRAPPER(cuModuleUnload, (CUmodule m), (m))
IMAGE_WRAPPER(cuLibraryLoadData,
              (CUlibrary * l, const void *code, CUjit_option *jo, void **jv, unsigned int nj,
               CUlibraryOption *lo, void **lv, unsigned int nl),
              (l, code, jo, jv, nj, lo, lv, nl))
IMAGE_WRAPPER(cuLibraryLoadFromFile,
              (CUlibrary * l, const char *file, CUjit_option *jo, void **jv, unsigned int nj,
               CUlibraryOption *lo, void **lv, unsigned int nl),
              (l, file, jo, jv, nj, lo, lv, nl))
IMAGE_WRAPPER(cuLibraryUnload, (CUlibrary l), (l))
