/* Stand-in CUDA driver (libcuda.so.1) over host memory, for testing the shim without a GPU.
 *
 * Implements the entry points the shim hooks and the test programs use (shim-contract.md 12.2)
 * with the real prototypes from cuda.h, driven by the device table in HAMI_FAKE_GPU_CONFIG
 * (shims/README.md). It enforces each device's capacity, so a test can tell a refusal by the shim
 * (the driver was never called) from one by the driver. Linked with -Bsymbolic: its own references
 * (cuGetProcAddress results, internal calls) never bind to the preloaded shim.
 */
#include <cuda.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fakecfg.h"

#define API __attribute__((visibility("default")))
#define MIB (1ull << 20)
#define POOL_CHUNK (32ull << 20)

/* ---------------------------------------------------------------- call records */

struct call_rec {
    const char *name;
    atomic_ulong n;
    atomic_int registered;
    struct call_rec *next;
};
static struct call_rec *_Atomic call_list;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;

static void rec_hit(struct call_rec *r)
{
    atomic_fetch_add_explicit(&r->n, 1, memory_order_relaxed);
    if (__builtin_expect(!atomic_load_explicit(&r->registered, memory_order_acquire), 0)) {
        pthread_mutex_lock(&call_mu);
        if (!atomic_load(&r->registered)) {
            r->next = atomic_load(&call_list);
            atomic_store(&call_list, r);
            atomic_store_explicit(&r->registered, 1, memory_order_release);
        }
        pthread_mutex_unlock(&call_mu);
    }
}

#define RECORD(fn)                                         \
    static struct call_rec rec_##fn = {.name = #fn};       \
    rec_hit(&rec_##fn)

/* ---------------------------------------------------------------- stalls (fork tests) */

/* fakegpu_stall_arm(name): the next call of entry point `name` (only those with a STALL point)
 * blocks, before taking any lock of the stand-in, until fakegpu_stall_release(); one-shot, so a
 * fork child never stalls. fakegpu_stalled() says whether a thread is blocked there now. Lets a
 * test fork while another thread is inside the driver with a lock of the shim held. */
static const char *_Atomic stall_name;
static atomic_int stall_active, stall_released;

API void fakegpu_stall_point(const char *name)
{
    const char *n = atomic_load(&stall_name);
    if (__builtin_expect(!n, 1) || strcmp(n, name) ||
        !atomic_compare_exchange_strong(&stall_name, &n, NULL))
        return;
    atomic_store(&stall_active, 1);
    while (!atomic_load(&stall_released)) {
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    atomic_store(&stall_active, 0);
}

API void fakegpu_stall_arm(const char *name)
{
    atomic_store(&stall_released, 0);
    atomic_store(&stall_name, name);
}

API int fakegpu_stalled(void) { return atomic_load(&stall_active); }

API void fakegpu_stall_release(void) { atomic_store(&stall_released, 1); }

/* ---------------------------------------------------------------- device state */

static struct fake_config cfg;
static pthread_once_t cfg_once = PTHREAD_ONCE_INIT;
static atomic_int initialized;
static int cuda_count;
static int cuda_to_table[FAKE_MAX_DEVICES];

struct CUctx_st {
    int dev;
    int primary;
    size_t limits[3]; /* CU_LIMIT_STACK_SIZE, _PRINTF_FIFO_SIZE, _MALLOC_HEAP_SIZE (default 0) */
};

struct CUmemPoolHandle_st {
    int dev;
    pthread_mutex_t mu;
    uint64_t used, used_high, reserved, reserved_high, threshold;
};

struct devstate {
    _Atomic uint64_t used;
    _Atomic uint64_t external;
    atomic_ulong contexts;
    _Atomic uint64_t busy_ns;
    pthread_mutex_t clock_mu; /* the virtual clock: work runs back to back in launch order */
    uint64_t enqueued_ns;     /* device time of every launch so far */
    uint64_t busy_until;      /* CLOCK_MONOTONIC ns at which the queued work is done */
    pthread_mutex_t mu;
    int primary_refs;
    struct CUctx_st primary;
    struct CUmemPoolHandle_st default_pool;
    struct CUmemPoolHandle_st *current_pool;
    /* graph memory pool (memory nodes): mapped at instantiation, kept reserved after the graph
     * is destroyed until cuDeviceGraphMemTrim */
    pthread_mutex_t gmu;
    uint64_t g_used, g_used_high, g_reserved, g_reserved_high;
};
static struct devstate devs[FAKE_MAX_DEVICES];

/* Bytes this process allocated through the stand-in, per device, as a real driver reports it
 * per process through NVML. It differs from devs[].used only in a fork child: the driver state a
 * child inherits is not the child's (CUDA state does not survive fork), so it starts at zero. */
static _Atomic uint64_t own_used[FAKE_MAX_DEVICES];

static void own_used_fork_child(void)
{
    for (int i = 0; i < FAKE_MAX_DEVICES; i++)
        atomic_store(&own_used[i], 0);
}
static atomic_long alloc_counter;
static _Atomic uint64_t bump_next = 0x200000000000ull;
static _Atomic uint64_t next_handle = 1;

static void load_config(void)
{
    fakecfg_load(&cfg);
    int order[FAKE_MAX_DEVICES];
    for (int i = 0; i < cfg.ndev; i++)
        order[i] = cfg.cuda_reverse ? cfg.ndev - 1 - i : i;
    /* CUDA_VISIBLE_DEVICES: ordinals (in CUDA order) or UUIDs; stops at the first invalid entry,
     * as the real driver does. */
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (vis) {
        char buf[512];
        snprintf(buf, sizeof(buf), "%s", vis);
        char *save = NULL;
        cuda_count = 0;
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            int idx = -1;
            if (t[0] >= '0' && t[0] <= '9') {
                int v = atoi(t);
                if (v < cfg.ndev)
                    idx = order[v];
            } else {
                for (int i = 0; i < cfg.ndev; i++)
                    if (!strncmp(cfg.dev[i].uuid, t, strlen(t)))
                        idx = i;
            }
            if (idx < 0)
                break;
            cuda_to_table[cuda_count++] = idx;
        }
    } else {
        cuda_count = cfg.ndev;
        memcpy(cuda_to_table, order, sizeof(order));
    }
    for (int i = 0; i < FAKE_MAX_DEVICES; i++) {
        pthread_mutex_init(&devs[i].mu, NULL);
        pthread_mutex_init(&devs[i].clock_mu, NULL);
        devs[i].primary.dev = i;
        devs[i].primary.primary = 1;
        devs[i].default_pool.dev = i;
        pthread_mutex_init(&devs[i].default_pool.mu, NULL);
        pthread_mutex_init(&devs[i].gmu, NULL);
        devs[i].current_pool = &devs[i].default_pool;
        atomic_store(&devs[i].external, cfg.external_used);
    }
    pthread_atfork(NULL, NULL, own_used_fork_child);
}

static void ensure_config(void) { pthread_once(&cfg_once, load_config); }

#define NEED_INIT()                                          \
    do {                                                     \
        if (!atomic_load_explicit(&initialized, memory_order_acquire)) \
            return CUDA_ERROR_NOT_INITIALIZED;               \
    } while (0)

#define CHECK_DEV(d)                                         \
    do {                                                     \
        if ((d) < 0 || (d) >= cuda_count)                    \
            return CUDA_ERROR_INVALID_DEVICE;                \
    } while (0)

static const struct fake_device *tdev(int ordinal) { return &cfg.dev[cuda_to_table[ordinal]]; }

static uint64_t capacity(int d)
{
    uint64_t mem = tdev(d)->memory_bytes, ext = atomic_load(&devs[d].external);
    return ext >= mem ? 0 : mem - ext;
}

/* Takes `n` bytes of device capacity; 0 on success. */
static int take(int d, uint64_t n)
{
    uint64_t cap = capacity(d);
    uint64_t cur = atomic_load(&devs[d].used);
    do {
        if (cur + n < cur || cur + n > cap)
            return -1;
    } while (!atomic_compare_exchange_weak(&devs[d].used, &cur, cur + n));
    atomic_fetch_add(&own_used[d], n);
    return 0;
}

static void give(int d, uint64_t n)
{
    atomic_fetch_sub(&devs[d].used, n);
    /* what this process holds never goes below zero: a fork child may free what its parent
     * allocated (own_used starts at zero in the child) */
    uint64_t cur = atomic_load(&own_used[d]);
    while (!atomic_compare_exchange_weak(&own_used[d], &cur, cur > n ? cur - n : 0))
        ;
}

static int injected_failure(void)
{
    if (cfg.fail_alloc_after < 0)
        return 0;
    return atomic_fetch_add(&alloc_counter, 1) + 1 == cfg.fail_alloc_after;
}

/* ---------------------------------------------------------------- object table */

enum kind { K_PTR = 1, K_POOLPTR, K_MANAGED, K_VMM, K_HOST };

struct obj {
    uint64_t key;
    int kind;
    int dev;
    uint64_t size;
    void *mem;
    struct CUmemPoolHandle_st *pool;
    struct obj *next;
};

#define NBUCKETS 65536
#define NSTRIPES 256
static struct obj *buckets[NBUCKETS];
static pthread_mutex_t stripes[NSTRIPES];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
    for (int i = 0; i < NSTRIPES; i++)
        pthread_mutex_init(&stripes[i], NULL);
}

static unsigned bucket_of(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (unsigned)(key & (NBUCKETS - 1));
}

static void obj_put(uint64_t key, int kind, int dev, uint64_t size, void *mem,
                    struct CUmemPoolHandle_st *pool)
{
    pthread_once(&table_once, table_init);
    struct obj *o = malloc(sizeof(*o));
    if (!o)
        abort();
    *o = (struct obj){key, kind, dev, size, mem, pool, NULL};
    unsigned b = bucket_of(key);
    pthread_mutex_lock(&stripes[b % NSTRIPES]);
    o->next = buckets[b];
    buckets[b] = o;
    pthread_mutex_unlock(&stripes[b % NSTRIPES]);
}

/* Removes and returns the object (caller frees), or NULL. kind 0 = any pointer kind. */
static struct obj *obj_take(uint64_t key, int kind)
{
    pthread_once(&table_once, table_init);
    unsigned b = bucket_of(key);
    pthread_mutex_lock(&stripes[b % NSTRIPES]);
    struct obj **pp = &buckets[b], *o;
    while ((o = *pp)) {
        if (o->key == key && (kind ? o->kind == kind : o->kind != K_VMM)) {
            *pp = o->next;
            break;
        }
        pp = &o->next;
    }
    pthread_mutex_unlock(&stripes[b % NSTRIPES]);
    return o;
}

static int obj_find(uint64_t key, struct obj *out)
{
    pthread_once(&table_once, table_init);
    unsigned b = bucket_of(key);
    int found = 0;
    pthread_mutex_lock(&stripes[b % NSTRIPES]);
    for (struct obj *o = buckets[b]; o; o = o->next)
        if (o->key == key && o->kind != K_VMM) {
            *out = *o;
            found = 1;
            break;
        }
    pthread_mutex_unlock(&stripes[b % NSTRIPES]);
    return found;
}

static void *backing_alloc(uint64_t size, uint64_t *addr)
{
    if (cfg.backing_none) {
        uint64_t step = (size + MIB - 1) & ~(MIB - 1);
        *addr = atomic_fetch_add(&bump_next, step ? step : MIB);
        return NULL;
    }
    void *p = NULL;
    if (posix_memalign(&p, 256, size ? size : 1) != 0)
        return NULL;
    *addr = (uint64_t)(uintptr_t)p;
    return p;
}

/* ---------------------------------------------------------------- contexts */

static __thread CUcontext ctx_stack[16];
static __thread int ctx_depth;

static CUcontext current_ctx(void) { return ctx_depth ? ctx_stack[ctx_depth - 1] : NULL; }

static CUresult current_dev(int *d)
{
    CUcontext c = current_ctx();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    *d = c->dev;
    return CUDA_SUCCESS;
}

static CUresult charge_context(int d)
{
    if (cfg.context_bytes && take(d, cfg.context_bytes))
        return CUDA_ERROR_OUT_OF_MEMORY;
    atomic_fetch_add(&devs[d].contexts, 1);
    return CUDA_SUCCESS;
}

static void push_ctx(CUcontext c)
{
    if (ctx_depth < 16)
        ctx_stack[ctx_depth++] = c;
}

/* Device memory behind a context limit: the stack for every resident thread of the device, the
 * printf FIFO and the malloc heap at their size. */
static uint64_t limit_cost(int d, int limit, size_t value)
{
    if (limit == CU_LIMIT_STACK_SIZE)
        return (uint64_t)value * (uint64_t)tdev(d)->sms * (uint64_t)tdev(d)->threads_per_sm;
    return value;
}

static void release_limits(struct CUctx_st *c)
{
    for (int l = 0; l < 3; l++) {
        give(c->dev, limit_cost(c->dev, l, c->limits[l]));
        c->limits[l] = 0;
    }
}

/* ---------------------------------------------------------------- bootstrap */

API CUresult cuInit(unsigned int flags)
{
    RECORD(cuInit);
    ensure_config();
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    atomic_store_explicit(&initialized, 1, memory_order_release);
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int *v)
{
    RECORD(cuDriverGetVersion);
    ensure_config();
    if (!v)
        return CUDA_ERROR_INVALID_VALUE;
    *v = cfg.driver_version;
    return CUDA_SUCCESS;
}

API CUresult cuGetErrorName(CUresult e, const char **s)
{
    RECORD(cuGetErrorName);
    switch (e) {
    case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case CUDA_ERROR_INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
    default: *s = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

API CUresult cuGetErrorString(CUresult e, const char **s)
{
    RECORD(cuGetErrorString);
    return cuGetErrorName(e, s);
}

API CUresult cuGetExportTable(const void **table, const CUuuid *id)
{
    RECORD(cuGetExportTable);
    (void)id;
    if (table)
        *table = NULL;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* ---------------------------------------------------------------- devices */

API CUresult cuDeviceGetCount(int *n)
{
    RECORD(cuDeviceGetCount);
    NEED_INIT();
    *n = cuda_count;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGet(CUdevice *d, int ordinal)
{
    RECORD(cuDeviceGet);
    NEED_INIT();
    CHECK_DEV(ordinal);
    *d = ordinal;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetName(char *name, int len, CUdevice d)
{
    RECORD(cuDeviceGetName);
    NEED_INIT();
    CHECK_DEV(d);
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", tdev(d)->name);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d)
{
    RECORD(cuDeviceGetUuid);
    NEED_INIT();
    CHECK_DEV(d);
    memcpy(u->bytes, tdev(d)->raw, 16);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d)
{
    RECORD(cuDeviceGetUuid_v2);
    NEED_INIT();
    CHECK_DEV(d);
    memcpy(u->bytes, tdev(d)->raw, 16);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice d)
{
    RECORD(cuDeviceTotalMem);
    NEED_INIT();
    CHECK_DEV(d);
    uint64_t m = tdev(d)->memory_bytes;
    *bytes = m > 0xffffffffull ? 0xffffffffu : (unsigned)m;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d)
{
    RECORD(cuDeviceTotalMem_v2);
    NEED_INIT();
    CHECK_DEV(d);
    *bytes = tdev(d)->memory_bytes;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute a, CUdevice d)
{
    RECORD(cuDeviceGetAttribute);
    NEED_INIT();
    CHECK_DEV(d);
    const struct fake_device *t = tdev(d);
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = t->sms; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *pi = t->threads_per_sm; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *pi = (int)t->pci_bus; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *pi = (int)t->pci_dev; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *pi = (int)t->pci_domain; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 8; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
    default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetPCIBusId(char *id, int len, CUdevice d)
{
    RECORD(cuDeviceGetPCIBusId);
    NEED_INIT();
    CHECK_DEV(d);
    const struct fake_device *t = tdev(d);
    snprintf(id, (size_t)len, "%04x:%02x:%02x.0", t->pci_domain, t->pci_bus, t->pci_dev);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- contexts */

static CUresult primary_retain(CUcontext *pctx, CUdevice d)
{
    NEED_INIT();
    CHECK_DEV(d);
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&devs[d].mu);
    if (devs[d].primary_refs == 0)
        r = charge_context(d);
    if (r == CUDA_SUCCESS) {
        devs[d].primary_refs++;
        *pctx = &devs[d].primary;
    }
    pthread_mutex_unlock(&devs[d].mu);
    return r;
}

static CUresult primary_release(CUdevice d)
{
    NEED_INIT();
    CHECK_DEV(d);
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&devs[d].mu);
    if (devs[d].primary_refs == 0)
        r = CUDA_ERROR_INVALID_CONTEXT;
    else if (--devs[d].primary_refs == 0) {
        give(d, cfg.context_bytes);
        release_limits(&devs[d].primary);
    }
    pthread_mutex_unlock(&devs[d].mu);
    return r;
}

API CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice d)
{
    RECORD(cuDevicePrimaryCtxRetain);
    return primary_retain(pctx, d);
}

API CUresult cuDevicePrimaryCtxRelease(CUdevice d)
{
    RECORD(cuDevicePrimaryCtxRelease);
    return primary_release(d);
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d)
{
    RECORD(cuDevicePrimaryCtxRelease_v2);
    return primary_release(d);
}

static CUresult ctx_create(CUcontext *pctx, CUdevice d)
{
    NEED_INIT();
    CHECK_DEV(d);
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = charge_context(d);
    if (r != CUDA_SUCCESS)
        return r;
    struct CUctx_st *c = calloc(1, sizeof(*c));
    c->dev = d;
    *pctx = c;
    push_ctx(c);
    return CUDA_SUCCESS;
}

API CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice d)
{
    RECORD(cuCtxCreate);
    (void)flags;
    return ctx_create(pctx, d);
}

API CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice d)
{
    RECORD(cuCtxCreate_v2);
    fakegpu_stall_point("cuCtxCreate_v2");
    (void)flags;
    return ctx_create(pctx, d);
}

API CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n, unsigned int flags,
                            CUdevice d)
{
    RECORD(cuCtxCreate_v3);
    (void)params, (void)n, (void)flags;
    return ctx_create(pctx, d);
}

API CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                            CUdevice d)
{
    RECORD(cuCtxCreate_v4);
    (void)params, (void)flags;
    return ctx_create(pctx, d);
}

static CUresult ctx_destroy(CUcontext c)
{
    NEED_INIT();
    if (!c || c->primary)
        return CUDA_ERROR_INVALID_CONTEXT;
    for (int i = 0; i < ctx_depth; i++)
        if (ctx_stack[i] == c) {
            memmove(&ctx_stack[i], &ctx_stack[i + 1], sizeof(CUcontext) * (size_t)(ctx_depth - i - 1));
            ctx_depth--;
            break;
        }
    give(c->dev, cfg.context_bytes);
    release_limits(c);
    free(c);
    return CUDA_SUCCESS;
}

API CUresult cuCtxDestroy(CUcontext c)
{
    RECORD(cuCtxDestroy);
    return ctx_destroy(c);
}

API CUresult cuCtxDestroy_v2(CUcontext c)
{
    RECORD(cuCtxDestroy_v2);
    return ctx_destroy(c);
}

API CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    RECORD(cuCtxGetCurrent);
    NEED_INIT();
    *pctx = current_ctx();
    return CUDA_SUCCESS;
}

API CUresult cuCtxSetCurrent(CUcontext c)
{
    RECORD(cuCtxSetCurrent);
    NEED_INIT();
    if (ctx_depth == 0) {
        if (c)
            push_ctx(c);
    } else if (c) {
        ctx_stack[ctx_depth - 1] = c;
    } else {
        ctx_depth--;
    }
    return CUDA_SUCCESS;
}

API CUresult cuCtxPushCurrent_v2(CUcontext c)
{
    RECORD(cuCtxPushCurrent_v2);
    NEED_INIT();
    if (!c || ctx_depth >= 16)
        return CUDA_ERROR_INVALID_VALUE;
    push_ctx(c);
    return CUDA_SUCCESS;
}

API CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    RECORD(cuCtxPopCurrent_v2);
    NEED_INIT();
    if (!ctx_depth)
        return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = ctx_stack[--ctx_depth];
    if (pctx)
        *pctx = c;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetDevice(CUdevice *d)
{
    RECORD(cuCtxGetDevice);
    NEED_INIT();
    int dev;
    CUresult r = current_dev(&dev);
    if (r == CUDA_SUCCESS)
        *d = dev;
    return r;
}

API CUresult cuCtxSynchronize(void)
{
    RECORD(cuCtxSynchronize);
    NEED_INIT();
    return current_ctx() ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

static size_t other_limits[16];

API CUresult cuCtxSetLimit(CUlimit limit, size_t value)
{
    RECORD(cuCtxSetLimit);
    NEED_INIT();
    CUcontext c = current_ctx();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    if ((unsigned)limit >= 16)
        return CUDA_ERROR_INVALID_VALUE;
    if ((unsigned)limit >= 3) {
        other_limits[limit] = value;
        return CUDA_SUCCESS;
    }
    uint64_t was = limit_cost(c->dev, limit, c->limits[limit]), now = limit_cost(c->dev, limit, value);
    if (now > was && take(c->dev, now - was))
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (now < was)
        give(c->dev, was - now);
    c->limits[limit] = value;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetLimit(size_t *value, CUlimit limit)
{
    RECORD(cuCtxGetLimit);
    NEED_INIT();
    CUcontext c = current_ctx();
    if (!c)
        return CUDA_ERROR_INVALID_CONTEXT;
    if ((unsigned)limit >= 16 || !value)
        return CUDA_ERROR_INVALID_VALUE;
    *value = (unsigned)limit < 3 ? c->limits[limit] : other_limits[limit];
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- modules and libraries */

/* A loaded module or library holds module_kib of device memory on the current context's device
 * (a library without a current context: CUDA ordinal 0) until unloaded. */
struct CUmod_st {
    int dev;
};

static CUresult image_load(void **out, const void *image)
{
    NEED_INIT();
    if (!out || !image)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext c = current_ctx();
    int d = c ? c->dev : 0;
    if (cuda_count == 0)
        return CUDA_ERROR_NO_DEVICE;
    if (take(d, cfg.module_bytes))
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct CUmod_st *m = malloc(sizeof(*m));
    m->dev = d;
    *out = m;
    return CUDA_SUCCESS;
}

static CUresult image_unload(void *h)
{
    NEED_INIT();
    if (!h)
        return CUDA_ERROR_INVALID_HANDLE;
    give(((struct CUmod_st *)h)->dev, cfg.module_bytes);
    free(h);
    return CUDA_SUCCESS;
}

API CUresult cuModuleLoad(CUmodule *m, const char *fname)
{
    RECORD(cuModuleLoad);
    if (!current_ctx())
        return CUDA_ERROR_INVALID_CONTEXT;
    return image_load((void **)m, fname);
}

API CUresult cuModuleLoadData(CUmodule *m, const void *image)
{
    RECORD(cuModuleLoadData);
    if (!current_ctx())
        return CUDA_ERROR_INVALID_CONTEXT;
    return image_load((void **)m, image);
}

API CUresult cuModuleLoadDataEx(CUmodule *m, const void *image, unsigned int n, CUjit_option *o,
                                void **v)
{
    RECORD(cuModuleLoadDataEx);
    (void)n, (void)o, (void)v;
    if (!current_ctx())
        return CUDA_ERROR_INVALID_CONTEXT;
    return image_load((void **)m, image);
}

API CUresult cuModuleLoadFatBinary(CUmodule *m, const void *fatbin)
{
    RECORD(cuModuleLoadFatBinary);
    if (!current_ctx())
        return CUDA_ERROR_INVALID_CONTEXT;
    return image_load((void **)m, fatbin);
}

API CUresult cuModuleUnload(CUmodule m)
{
    RECORD(cuModuleUnload);
    return image_unload(m);
}

API CUresult cuLibraryLoadData(CUlibrary *l, const void *code, CUjit_option *jo, void **jv,
                               unsigned int nj, CUlibraryOption *lo, void **lv, unsigned int nl)
{
    RECORD(cuLibraryLoadData);
    (void)jo, (void)jv, (void)nj, (void)lo, (void)lv, (void)nl;
    return image_load((void **)l, code);
}

API CUresult cuLibraryLoadFromFile(CUlibrary *l, const char *file, CUjit_option *jo, void **jv,
                                   unsigned int nj, CUlibraryOption *lo, void **lv, unsigned int nl)
{
    RECORD(cuLibraryLoadFromFile);
    (void)jo, (void)jv, (void)nj, (void)lo, (void)lv, (void)nl;
    return image_load((void **)l, file);
}

API CUresult cuLibraryUnload(CUlibrary l)
{
    RECORD(cuLibraryUnload);
    return image_unload(l);
}

/* ---------------------------------------------------------------- memory info */

static CUresult mem_info(size_t *free_b, size_t *total_b)
{
    NEED_INIT();
    int d;
    CUresult r = current_dev(&d);
    if (r != CUDA_SUCCESS)
        return r;
    uint64_t cap = capacity(d), used = atomic_load(&devs[d].used);
    *total_b = tdev(d)->memory_bytes;
    *free_b = used >= cap ? 0 : cap - used;
    return CUDA_SUCCESS;
}

API CUresult cuMemGetInfo(unsigned int *free_b, unsigned int *total_b)
{
    RECORD(cuMemGetInfo);
    size_t f, t;
    CUresult r = mem_info(&f, &t);
    if (r == CUDA_SUCCESS) {
        *free_b = f > 0xffffffffu ? 0xffffffffu : (unsigned)f;
        *total_b = t > 0xffffffffu ? 0xffffffffu : (unsigned)t;
    }
    return r;
}

API CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b)
{
    RECORD(cuMemGetInfo_v2);
    return mem_info(free_b, total_b);
}

/* ---------------------------------------------------------------- linear allocations */

static CUresult plain_alloc(CUdeviceptr *dptr, uint64_t size, int kind)
{
    NEED_INIT();
    int d;
    CUresult r = current_dev(&d);
    if (r != CUDA_SUCCESS)
        return r;
    if (!dptr || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (injected_failure() || take(d, size))
        return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t addr;
    void *mem = backing_alloc(size, &addr);
    if (!cfg.backing_none && !mem) {
        give(d, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    obj_put(addr, kind, d, size, mem, NULL);
    *dptr = addr;
    return CUDA_SUCCESS;
}

API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size)
{
    RECORD(cuMemAlloc_v2);
    return plain_alloc(dptr, size, K_PTR);
}

API CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags)
{
    RECORD(cuMemAllocManaged);
    (void)flags;
    return plain_alloc(dptr, size, K_MANAGED);
}

API CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                unsigned int elem)
{
    RECORD(cuMemAllocPitch_v2);
    NEED_INIT();
    if (!pitch || (elem != 4 && elem != 8 && elem != 16) || width == 0 || height == 0)
        return CUDA_ERROR_INVALID_VALUE;
    size_t p = (width + 511) & ~(size_t)511;
    CUresult r = plain_alloc(dptr, (uint64_t)p * height, K_PTR);
    if (r == CUDA_SUCCESS)
        *pitch = p;
    return r;
}

static CUresult pool_free_ptr(struct obj *o);

API CUresult cuMemFree_v2(CUdeviceptr p)
{
    RECORD(cuMemFree_v2);
    NEED_INIT();
    if (p == 0)
        return CUDA_SUCCESS;
    struct obj *o = obj_take(p, 0);
    if (!o)
        return CUDA_ERROR_INVALID_VALUE;
    if (o->kind == K_POOLPTR)
        return pool_free_ptr(o);
    if (o->kind == K_HOST) {
        obj_put(o->key, o->kind, o->dev, o->size, o->mem, o->pool);
        free(o);
        return CUDA_ERROR_INVALID_VALUE;
    }
    give(o->dev, o->size);
    free(o->mem);
    free(o);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- stream-ordered pools */

struct CUstream_st {
    int dev;
};

static CUresult stream_dev(CUstream s, int *d)
{
    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD) {
        *d = s->dev;
        return CUDA_SUCCESS;
    }
    return current_dev(d);
}

static uint64_t round_chunk(uint64_t n) { return (n + POOL_CHUNK - 1) / POOL_CHUNK * POOL_CHUNK; }

static void pool_shrink(struct CUmemPoolHandle_st *p, uint64_t keep)
{
    uint64_t target = round_chunk(p->used);
    uint64_t k = round_chunk(keep);
    if (k > target)
        target = k;
    if (p->reserved > target) {
        give(p->dev, p->reserved - target);
        p->reserved = target;
    }
}

static CUresult pool_alloc(CUdeviceptr *dptr, size_t size, struct CUmemPoolHandle_st *p)
{
    if (!dptr || size == 0 || !p)
        return CUDA_ERROR_INVALID_VALUE;
    if (injected_failure())
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&p->mu);
    uint64_t need = round_chunk(p->used + size);
    if (need > p->reserved) {
        if (take(p->dev, need - p->reserved)) {
            pthread_mutex_unlock(&p->mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        p->reserved = need;
        if (need > p->reserved_high)
            p->reserved_high = need;
    }
    p->used += size;
    if (p->used > p->used_high)
        p->used_high = p->used;
    pthread_mutex_unlock(&p->mu);
    uint64_t addr;
    void *mem = backing_alloc(size, &addr);
    obj_put(addr, K_POOLPTR, p->dev, size, mem, p);
    *dptr = addr;
    return CUDA_SUCCESS;
}

static CUresult pool_free_ptr(struct obj *o)
{
    struct CUmemPoolHandle_st *p = o->pool;
    pthread_mutex_lock(&p->mu);
    p->used -= o->size;
    if (p->reserved > p->threshold)
        pool_shrink(p, p->threshold);
    pthread_mutex_unlock(&p->mu);
    free(o->mem);
    free(o);
    return CUDA_SUCCESS;
}

static CUresult alloc_async(CUdeviceptr *dptr, size_t size, CUstream s)
{
    NEED_INIT();
    int d;
    CUresult r = stream_dev(s, &d);
    if (r != CUDA_SUCCESS)
        return r;
    return pool_alloc(dptr, size, devs[d].current_pool);
}

API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream s)
{
    RECORD(cuMemAllocAsync);
    return alloc_async(dptr, size, s);
}

API CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream s)
{
    RECORD(cuMemAllocAsync_ptsz);
    return alloc_async(dptr, size, s);
}

API CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s)
{
    RECORD(cuMemAllocFromPoolAsync);
    NEED_INIT();
    (void)s;
    return pool_alloc(dptr, size, pool);
}

API CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                                          CUstream s)
{
    RECORD(cuMemAllocFromPoolAsync_ptsz);
    NEED_INIT();
    (void)s;
    return pool_alloc(dptr, size, pool);
}

static CUresult free_async(CUdeviceptr p)
{
    NEED_INIT();
    struct obj *o = obj_take(p, 0);
    if (!o)
        return CUDA_ERROR_INVALID_VALUE;
    if (o->kind == K_POOLPTR)
        return pool_free_ptr(o);
    give(o->dev, o->size);
    free(o->mem);
    free(o);
    return CUDA_SUCCESS;
}

API CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s)
{
    RECORD(cuMemFreeAsync);
    (void)s;
    return free_async(p);
}

API CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s)
{
    RECORD(cuMemFreeAsync_ptsz);
    (void)s;
    return free_async(p);
}

API CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props)
{
    RECORD(cuMemPoolCreate);
    NEED_INIT();
    if (!pool || !props || props->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    CHECK_DEV(props->location.id);
    struct CUmemPoolHandle_st *p = calloc(1, sizeof(*p));
    p->dev = props->location.id;
    pthread_mutex_init(&p->mu, NULL);
    *pool = p;
    return CUDA_SUCCESS;
}

API CUresult cuMemPoolDestroy(CUmemoryPool p)
{
    RECORD(cuMemPoolDestroy);
    NEED_INIT();
    if (!p || p == &devs[p->dev].default_pool)
        return CUDA_ERROR_INVALID_VALUE;
    if (devs[p->dev].current_pool == p)
        devs[p->dev].current_pool = &devs[p->dev].default_pool;
    give(p->dev, p->reserved);
    /* Outstanding allocations of a destroyed pool stay valid in the real driver until freed;
     * the fake simply forgets the pool's capacity. */
    p->reserved = 0;
    return CUDA_SUCCESS;
}

API CUresult cuMemPoolTrimTo(CUmemoryPool p, size_t keep)
{
    RECORD(cuMemPoolTrimTo);
    NEED_INIT();
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&p->mu);
    pool_shrink(p, keep);
    pthread_mutex_unlock(&p->mu);
    return CUDA_SUCCESS;
}

API CUresult cuMemPoolGetAttribute(CUmemoryPool p, CUmemPool_attribute a, void *value)
{
    RECORD(cuMemPoolGetAttribute);
    fakegpu_stall_point("cuMemPoolGetAttribute");
    NEED_INIT();
    if (!p || !value)
        return CUDA_ERROR_INVALID_VALUE;
    cuuint64_t *v = value;
    pthread_mutex_lock(&p->mu);
    CUresult r = CUDA_SUCCESS;
    switch (a) {
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *v = p->reserved; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *v = p->reserved_high; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *v = p->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *v = p->used_high; break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *v = p->threshold; break;
    default: r = CUDA_ERROR_INVALID_VALUE; break;
    }
    pthread_mutex_unlock(&p->mu);
    return r;
}

API CUresult cuMemPoolSetAttribute(CUmemoryPool p, CUmemPool_attribute a, void *value)
{
    RECORD(cuMemPoolSetAttribute);
    NEED_INIT();
    if (!p || !value || a != CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&p->mu);
    p->threshold = *(cuuint64_t *)value;
    pthread_mutex_unlock(&p->mu);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice d)
{
    RECORD(cuDeviceGetDefaultMemPool);
    NEED_INIT();
    CHECK_DEV(d);
    *pool = &devs[d].default_pool;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice d)
{
    RECORD(cuDeviceGetMemPool);
    NEED_INIT();
    CHECK_DEV(d);
    *pool = devs[d].current_pool;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceSetMemPool(CUdevice d, CUmemoryPool pool)
{
    RECORD(cuDeviceSetMemPool);
    NEED_INIT();
    CHECK_DEV(d);
    if (!pool || pool->dev != d)
        return CUDA_ERROR_INVALID_VALUE;
    devs[d].current_pool = pool;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- virtual memory management */

API CUresult cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *prop,
                                           CUmemAllocationGranularity_flags option)
{
    RECORD(cuMemGetAllocationGranularity);
    NEED_INIT();
    (void)option;
    if (!g || !prop)
        return CUDA_ERROR_INVALID_VALUE;
    *g = cfg.granularity;
    return CUDA_SUCCESS;
}

API CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size,
                         const CUmemAllocationProp *prop, unsigned long long flags)
{
    RECORD(cuMemCreate);
    NEED_INIT();
    (void)flags;
    if (!h || !prop || size == 0 || size % cfg.granularity)
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_NOT_SUPPORTED;
    int d = prop->location.id;
    CHECK_DEV(d);
    if (injected_failure() || take(d, size))
        return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t id = atomic_fetch_add(&next_handle, 1);
    obj_put(id, K_VMM, d, size, NULL, NULL);
    *h = id;
    return CUDA_SUCCESS;
}

API CUresult cuMemRelease(CUmemGenericAllocationHandle h)
{
    RECORD(cuMemRelease);
    NEED_INIT();
    struct obj *o = obj_take(h, K_VMM);
    if (!o)
        return CUDA_ERROR_INVALID_VALUE;
    give(o->dev, o->size);
    free(o);
    return CUDA_SUCCESS;
}

API CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t align, CUdeviceptr addr,
                                 unsigned long long flags)
{
    RECORD(cuMemAddressReserve);
    NEED_INIT();
    (void)align, (void)addr, (void)flags;
    if (!ptr || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    *ptr = atomic_fetch_add(&bump_next, (size + MIB - 1) & ~(MIB - 1));
    return CUDA_SUCCESS;
}

API CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    RECORD(cuMemAddressFree);
    NEED_INIT();
    (void)ptr, (void)size;
    return CUDA_SUCCESS;
}

API CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle h,
                      unsigned long long flags)
{
    RECORD(cuMemMap);
    NEED_INIT();
    (void)ptr, (void)size, (void)offset, (void)h, (void)flags;
    return CUDA_SUCCESS;
}

API CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    RECORD(cuMemUnmap);
    NEED_INIT();
    (void)ptr, (void)size;
    return CUDA_SUCCESS;
}

API CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    RECORD(cuMemSetAccess);
    NEED_INIT();
    (void)ptr, (void)size, (void)desc, (void)count;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- arrays and mipmaps */

struct CUarray_st {
    int dev;
    uint64_t size;
};
struct CUmipmappedArray_st {
    int dev;
    uint64_t size;
};

static uint64_t format_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    default: return 4;
    }
}

/* What the fake "driver" uses for an array: the raw size rounded up to 64 KiB. */
static uint64_t array_bytes(size_t w, size_t h, size_t dpt, unsigned ch, CUarray_format f)
{
    uint64_t raw = (uint64_t)w * (h ? h : 1) * (dpt ? dpt : 1) * ch * format_bytes(f);
    return (raw + 65535) & ~65535ull;
}

static CUresult array_make(CUarray *out, uint64_t size)
{
    NEED_INIT();
    int d;
    CUresult r = current_dev(&d);
    if (r != CUDA_SUCCESS)
        return r;
    if (!out || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (injected_failure() || take(d, size))
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct CUarray_st *a = malloc(sizeof(*a));
    a->dev = d;
    a->size = size;
    *out = a;
    return CUDA_SUCCESS;
}

API CUresult cuArrayCreate_v2(CUarray *out, const CUDA_ARRAY_DESCRIPTOR *desc)
{
    RECORD(cuArrayCreate_v2);
    if (!desc)
        return CUDA_ERROR_INVALID_VALUE;
    return array_make(out, array_bytes(desc->Width, desc->Height, 1, desc->NumChannels, desc->Format));
}

API CUresult cuArray3DCreate_v2(CUarray *out, const CUDA_ARRAY3D_DESCRIPTOR *desc)
{
    RECORD(cuArray3DCreate_v2);
    if (!desc)
        return CUDA_ERROR_INVALID_VALUE;
    return array_make(out, array_bytes(desc->Width, desc->Height, desc->Depth, desc->NumChannels,
                                       desc->Format));
}

API CUresult cuArrayDestroy(CUarray a)
{
    RECORD(cuArrayDestroy);
    NEED_INIT();
    if (!a)
        return CUDA_ERROR_INVALID_HANDLE;
    give(a->dev, a->size);
    free(a);
    return CUDA_SUCCESS;
}

API CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray a,
                                          CUdevice d)
{
    RECORD(cuArrayGetMemoryRequirements);
    NEED_INIT();
    (void)d;
    if (!req || !a)
        return CUDA_ERROR_INVALID_VALUE;
    memset(req, 0, sizeof(*req));
    req->size = a->size;
    req->alignment = 65536;
    return CUDA_SUCCESS;
}

API CUresult cuMipmappedArrayCreate(CUmipmappedArray *out, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                    unsigned int levels)
{
    RECORD(cuMipmappedArrayCreate);
    NEED_INIT();
    int d;
    CUresult r = current_dev(&d);
    if (r != CUDA_SUCCESS)
        return r;
    if (!out || !desc || levels == 0)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t size = 0;
    for (unsigned l = 0; l < levels; l++) {
        size_t w = desc->Width >> l, h = desc->Height >> l, z = desc->Depth >> l;
        size += array_bytes(w ? w : 1, desc->Height ? (h ? h : 1) : 0,
                            desc->Depth ? (z ? z : 1) : 0, desc->NumChannels, desc->Format);
    }
    if (injected_failure() || take(d, size))
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct CUmipmappedArray_st *m = malloc(sizeof(*m));
    m->dev = d;
    m->size = size;
    *out = m;
    return CUDA_SUCCESS;
}

API CUresult cuMipmappedArrayDestroy(CUmipmappedArray m)
{
    RECORD(cuMipmappedArrayDestroy);
    NEED_INIT();
    if (!m)
        return CUDA_ERROR_INVALID_HANDLE;
    give(m->dev, m->size);
    free(m);
    return CUDA_SUCCESS;
}

API CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req,
                                                   CUmipmappedArray m, CUdevice d)
{
    RECORD(cuMipmappedArrayGetMemoryRequirements);
    NEED_INIT();
    (void)d;
    if (!req || !m)
        return CUDA_ERROR_INVALID_VALUE;
    memset(req, 0, sizeof(*req));
    req->size = m->size;
    req->alignment = 65536;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- host memory */

static CUresult host_alloc(void **pp, size_t size)
{
    NEED_INIT();
    if (!pp || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    *pp = malloc(size);
    if (!*pp)
        return CUDA_ERROR_OUT_OF_MEMORY;
    obj_put((uint64_t)(uintptr_t)*pp, K_HOST, -1, size, *pp, NULL);
    return CUDA_SUCCESS;
}

API CUresult cuMemAllocHost_v2(void **pp, size_t size)
{
    RECORD(cuMemAllocHost_v2);
    return host_alloc(pp, size);
}

API CUresult cuMemHostAlloc(void **pp, size_t size, unsigned int flags)
{
    RECORD(cuMemHostAlloc);
    (void)flags;
    return host_alloc(pp, size);
}

API CUresult cuMemFreeHost(void *p)
{
    RECORD(cuMemFreeHost);
    NEED_INIT();
    struct obj *o = obj_take((uint64_t)(uintptr_t)p, K_HOST);
    if (!o)
        return CUDA_ERROR_INVALID_VALUE;
    free(o->mem);
    free(o);
    return CUDA_SUCCESS;
}

API CUresult cuMemHostRegister_v2(void *p, size_t size, unsigned int flags)
{
    RECORD(cuMemHostRegister_v2);
    NEED_INIT();
    (void)flags;
    return p && size ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuMemHostUnregister(void *p)
{
    RECORD(cuMemHostUnregister);
    NEED_INIT();
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---------------------------------------------------------------- copies, pointers */

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
    RECORD(cuMemcpyHtoD_v2);
    NEED_INIT();
    if (!cfg.backing_none)
        memcpy((void *)(uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}

API CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    RECORD(cuMemcpyDtoH_v2);
    NEED_INIT();
    if (!cfg.backing_none)
        memcpy(dst, (const void *)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n)
{
    RECORD(cuMemsetD8_v2);
    NEED_INIT();
    if (!cfg.backing_none)
        memset((void *)(uintptr_t)dst, v, n);
    return CUDA_SUCCESS;
}

API CUresult cuPointerGetAttribute(void *data, CUpointer_attribute a, CUdeviceptr p)
{
    RECORD(cuPointerGetAttribute);
    NEED_INIT();
    struct obj o;
    if (!obj_find(p, &o))
        return CUDA_ERROR_INVALID_VALUE;
    switch (a) {
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *(int *)data = o.dev; break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED: *(unsigned *)data = o.kind == K_MANAGED; break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: *(size_t *)data = o.size; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

API CUresult cuPointerGetAttributes(unsigned int n, CUpointer_attribute *attrs, void **data,
                                    CUdeviceptr p)
{
    RECORD(cuPointerGetAttributes);
    NEED_INIT();
    for (unsigned i = 0; i < n; i++) {
        CUresult r = cuPointerGetAttribute(data[i], attrs[i], p);
        if (r != CUDA_SUCCESS)
            return r;
    }
    return CUDA_SUCCESS;
}

API CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr p)
{
    RECORD(cuMemGetAddressRange_v2);
    NEED_INIT();
    struct obj o;
    if (!obj_find(p, &o))
        return CUDA_ERROR_NOT_FOUND;
    if (base)
        *base = o.key;
    if (size)
        *size = o.size;
    return CUDA_SUCCESS;
}

/* Unified memory hints: ABI differs per variant (v1 takes a device, _v2 a location). */
API CUresult cuMemAdvise(CUdeviceptr p, size_t n, CUmem_advise a, CUdevice d)
{
    RECORD(cuMemAdvise);
    NEED_INIT();
    (void)p, (void)n, (void)a;
    CHECK_DEV(d);
    return CUDA_SUCCESS;
}

API CUresult cuMemAdvise_v2(CUdeviceptr p, size_t n, CUmem_advise a, CUmemLocation loc)
{
    RECORD(cuMemAdvise_v2);
    NEED_INIT();
    (void)p, (void)n, (void)a;
    if (loc.type == CU_MEM_LOCATION_TYPE_DEVICE)
        CHECK_DEV(loc.id);
    return CUDA_SUCCESS;
}

API CUresult cuMemPrefetchAsync(CUdeviceptr p, size_t n, CUdevice d, CUstream s)
{
    RECORD(cuMemPrefetchAsync);
    NEED_INIT();
    (void)p, (void)n, (void)s;
    CHECK_DEV(d);
    return CUDA_SUCCESS;
}

API CUresult cuMemPrefetchAsync_ptsz(CUdeviceptr p, size_t n, CUdevice d, CUstream s)
{
    RECORD(cuMemPrefetchAsync_ptsz);
    NEED_INIT();
    (void)p, (void)n, (void)s;
    CHECK_DEV(d);
    return CUDA_SUCCESS;
}

API CUresult cuMemPrefetchAsync_v2(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned int flags,
                                   CUstream s)
{
    RECORD(cuMemPrefetchAsync_v2);
    NEED_INIT();
    (void)p, (void)n, (void)flags, (void)s, (void)loc;
    return CUDA_SUCCESS;
}

API CUresult cuMemPrefetchAsync_v2_ptsz(CUdeviceptr p, size_t n, CUmemLocation loc,
                                        unsigned int flags, CUstream s)
{
    RECORD(cuMemPrefetchAsync_v2_ptsz);
    NEED_INIT();
    (void)p, (void)n, (void)flags, (void)s, (void)loc;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- streams */

API CUresult cuStreamCreate(CUstream *s, unsigned int flags)
{
    RECORD(cuStreamCreate);
    NEED_INIT();
    (void)flags;
    int d;
    CUresult r = current_dev(&d);
    if (r != CUDA_SUCCESS)
        return r;
    struct CUstream_st *st = malloc(sizeof(*st));
    st->dev = d;
    *s = st;
    return CUDA_SUCCESS;
}

API CUresult cuStreamDestroy_v2(CUstream s)
{
    RECORD(cuStreamDestroy_v2);
    NEED_INIT();
    free(s);
    return CUDA_SUCCESS;
}

API CUresult cuStreamSynchronize(CUstream s)
{
    RECORD(cuStreamSynchronize);
    NEED_INIT();
    (void)s;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- launches and graphs */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Device time executed on ordinal `d` up to now: what was queued minus what is still queued. */
static void clock_read(int d, uint64_t *done, uint64_t *now)
{
    pthread_mutex_lock(&devs[d].clock_mu);
    uint64_t t = mono_ns(), q = devs[d].busy_until > t ? devs[d].busy_until - t : 0;
    *done = devs[d].enqueued_ns - q;
    *now = t;
    pthread_mutex_unlock(&devs[d].clock_mu);
}

/* Virtual GPU clock: a launch keeps the device busy for blocks x threads x thread_ns / SM count,
 * after the work queued before it. Like a real launch queue, the call blocks while more than
 * launch_queue_us of work is pending, so an unthrottled loop runs the device at 100 %. */
static CUresult launch(CUstream s, uint64_t blocks, uint64_t threads, CUfunction f)
{
    NEED_INIT();
    if (!f)
        return CUDA_ERROR_INVALID_HANDLE;
    int d;
    CUresult r = stream_dev(s, &d);
    if (r != CUDA_SUCCESS)
        return r;
    int sms = tdev(d)->sms > 0 ? tdev(d)->sms : 1;
    uint64_t cost = (uint64_t)((double)blocks * (double)threads * cfg.thread_ns / sms);
    atomic_fetch_add_explicit(&devs[d].busy_ns, cost, memory_order_relaxed);
    pthread_mutex_lock(&devs[d].clock_mu);
    uint64_t now = mono_ns();
    uint64_t start = devs[d].busy_until > now ? devs[d].busy_until : now;
    devs[d].busy_until = start + cost;
    devs[d].enqueued_ns += cost;
    uint64_t backlog = devs[d].busy_until - now;
    pthread_mutex_unlock(&devs[d].clock_mu);
    if (backlog > cfg.launch_queue_ns) {
        uint64_t wait = backlog - cfg.launch_queue_ns;
        struct timespec ts = {(time_t)(wait / 1000000000ull), (long)(wait % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    return CUDA_SUCCESS;
}

#define DIMS unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
             unsigned int bz, unsigned int shm, CUstream s

API CUresult cuLaunchKernel(CUfunction f, DIMS, void **params, void **extra)
{
    RECORD(cuLaunchKernel);
    (void)shm, (void)params, (void)extra;
    return launch(s, (uint64_t)gx * gy * gz, (uint64_t)bx * by * bz, f);
}

API CUresult cuLaunchKernel_ptsz(CUfunction f, DIMS, void **params, void **extra)
{
    RECORD(cuLaunchKernel_ptsz);
    (void)shm, (void)params, (void)extra;
    return launch(s, (uint64_t)gx * gy * gz, (uint64_t)bx * by * bz, f);
}

API CUresult cuLaunchCooperativeKernel(CUfunction f, DIMS, void **params)
{
    RECORD(cuLaunchCooperativeKernel);
    (void)shm, (void)params;
    return launch(s, (uint64_t)gx * gy * gz, (uint64_t)bx * by * bz, f);
}

API CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, DIMS, void **params)
{
    RECORD(cuLaunchCooperativeKernel_ptsz);
    (void)shm, (void)params;
    return launch(s, (uint64_t)gx * gy * gz, (uint64_t)bx * by * bz, f);
}

static CUresult launch_ex(const CUlaunchConfig *c, CUfunction f)
{
    if (!c)
        return CUDA_ERROR_INVALID_VALUE;
    return launch(c->hStream, (uint64_t)c->gridDimX * c->gridDimY * c->gridDimZ,
                  (uint64_t)c->blockDimX * c->blockDimY * c->blockDimZ, f);
}

API CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra)
{
    RECORD(cuLaunchKernelEx);
    (void)params, (void)extra;
    return launch_ex(c, f);
}

API CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **params,
                                   void **extra)
{
    RECORD(cuLaunchKernelEx_ptsz);
    (void)params, (void)extra;
    return launch_ex(c, f);
}

#define GRAPH_MAX_NODES 64
struct CUgraphNode_st {
    CUgraphNodeType type;
    CUDA_KERNEL_NODE_PARAMS kp;
    CUDA_MEM_ALLOC_NODE_PARAMS mp; /* CU_GRAPH_NODE_TYPE_MEM_ALLOC */
};
struct CUgraph_st {
    int n;
    struct CUgraphNode_st nodes[GRAPH_MAX_NODES];
};
struct CUgraphExec_st {
    uint64_t work;                         /* sum over kernel nodes of blocks * threads */
    uint64_t gmem[FAKE_MAX_DEVICES];       /* graph memory mapped for its allocation nodes */
};

API CUresult cuGraphCreate(CUgraph *g, unsigned int flags)
{
    RECORD(cuGraphCreate);
    NEED_INIT();
    (void)flags;
    *g = calloc(1, sizeof(**g));
    return CUDA_SUCCESS;
}

API CUresult cuGraphAddKernelNode_v2(CUgraphNode *node, CUgraph g, const CUgraphNode *deps,
                                     size_t ndeps, const CUDA_KERNEL_NODE_PARAMS *p)
{
    RECORD(cuGraphAddKernelNode_v2);
    NEED_INIT();
    (void)deps, (void)ndeps;
    if (!g || !p || !node)
        return CUDA_ERROR_INVALID_VALUE;
    if (g->n >= GRAPH_MAX_NODES)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct CUgraphNode_st *nd = &g->nodes[g->n++];
    nd->type = CU_GRAPH_NODE_TYPE_KERNEL;
    nd->kp = *p;
    *node = nd;
    return CUDA_SUCCESS;
}

API CUresult cuGraphGetNodes(CUgraph g, CUgraphNode *nodes, size_t *num)
{
    RECORD(cuGraphGetNodes);
    NEED_INIT();
    if (!g || !num)
        return CUDA_ERROR_INVALID_VALUE;
    if (nodes) {
        for (size_t i = 0; i < *num; i++)
            nodes[i] = i < (size_t)g->n ? &g->nodes[i] : NULL;
    }
    *num = (size_t)g->n;
    return CUDA_SUCCESS;
}

API CUresult cuGraphNodeGetType(CUgraphNode node, CUgraphNodeType *type)
{
    RECORD(cuGraphNodeGetType);
    NEED_INIT();
    if (!node || !type)
        return CUDA_ERROR_INVALID_VALUE;
    *type = node->type;
    return CUDA_SUCCESS;
}

API CUresult cuGraphKernelNodeGetParams_v2(CUgraphNode node, CUDA_KERNEL_NODE_PARAMS *p)
{
    RECORD(cuGraphKernelNodeGetParams_v2);
    NEED_INIT();
    if (!node || !p || node->type != CU_GRAPH_NODE_TYPE_KERNEL)
        return CUDA_ERROR_INVALID_VALUE;
    *p = node->kp;
    return CUDA_SUCCESS;
}

API CUresult cuGraphAddMemAllocNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps,
                                    size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *p)
{
    RECORD(cuGraphAddMemAllocNode);
    NEED_INIT();
    (void)deps, (void)ndeps;
    if (!g || !p || !node || p->bytesize == 0 ||
        p->poolProps.location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    CHECK_DEV(p->poolProps.location.id);
    if (g->n >= GRAPH_MAX_NODES)
        return CUDA_ERROR_OUT_OF_MEMORY;
    /* the virtual address is fixed now; physical memory is mapped when the graph is instantiated */
    p->dptr = atomic_fetch_add(&bump_next, (p->bytesize + MIB - 1) & ~(MIB - 1));
    struct CUgraphNode_st *nd = &g->nodes[g->n++];
    memset(nd, 0, sizeof(*nd));
    nd->type = CU_GRAPH_NODE_TYPE_MEM_ALLOC;
    nd->mp = *p;
    *node = nd;
    return CUDA_SUCCESS;
}

API CUresult cuGraphAddMemFreeNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps,
                                   size_t ndeps, CUdeviceptr dptr)
{
    RECORD(cuGraphAddMemFreeNode);
    NEED_INIT();
    (void)deps, (void)ndeps;
    if (!g || !node || !dptr)
        return CUDA_ERROR_INVALID_VALUE;
    if (g->n >= GRAPH_MAX_NODES)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct CUgraphNode_st *nd = &g->nodes[g->n++];
    memset(nd, 0, sizeof(*nd));
    nd->type = CU_GRAPH_NODE_TYPE_MEM_FREE;
    *node = nd;
    return CUDA_SUCCESS;
}

API CUresult cuGraphMemAllocNodeGetParams(CUgraphNode node, CUDA_MEM_ALLOC_NODE_PARAMS *out)
{
    RECORD(cuGraphMemAllocNodeGetParams);
    NEED_INIT();
    if (!node || !out || node->type != CU_GRAPH_NODE_TYPE_MEM_ALLOC)
        return CUDA_ERROR_INVALID_VALUE;
    *out = node->mp;
    return CUDA_SUCCESS;
}

/* Maps (or unmaps, with sign < 0) an executable graph's memory in the devices' graph pools. The
 * pool grows when its reservation cannot hold what mapped graphs use; it never shrinks by itself. */
static int gmem_map(struct CUgraphExec_st *x, int sign)
{
    for (int d = 0; d < cuda_count; d++) {
        if (!x->gmem[d])
            continue;
        struct devstate *ds = &devs[d];
        pthread_mutex_lock(&ds->gmu);
        if (sign < 0) {
            ds->g_used -= x->gmem[d];
        } else {
            uint64_t need = ds->g_used + x->gmem[d];
            if (need > ds->g_reserved) {
                if (take(d, need - ds->g_reserved)) {
                    pthread_mutex_unlock(&ds->gmu);
                    for (int k = 0; k < d; k++)
                        if (x->gmem[k]) {
                            pthread_mutex_lock(&devs[k].gmu);
                            devs[k].g_used -= x->gmem[k];
                            pthread_mutex_unlock(&devs[k].gmu);
                        }
                    return -1;
                }
                ds->g_reserved = need;
                if (need > ds->g_reserved_high)
                    ds->g_reserved_high = need;
            }
            ds->g_used = need;
            if (need > ds->g_used_high)
                ds->g_used_high = need;
        }
        pthread_mutex_unlock(&ds->gmu);
    }
    return 0;
}

static CUresult instantiate(CUgraphExec *e, CUgraph g)
{
    NEED_INIT();
    if (!g || !e)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUgraphExec_st *x = calloc(1, sizeof(*x));
    if (!x)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < g->n; i++) {
        const struct CUgraphNode_st *nd = &g->nodes[i];
        if (nd->type == CU_GRAPH_NODE_TYPE_MEM_ALLOC) {
            x->gmem[nd->mp.poolProps.location.id] += nd->mp.bytesize;
            continue;
        }
        const CUDA_KERNEL_NODE_PARAMS *p = &nd->kp;
        x->work += (uint64_t)p->gridDimX * p->gridDimY * p->gridDimZ * p->blockDimX *
                   p->blockDimY * p->blockDimZ;
    }
    if (gmem_map(x, 1)) {
        free(x);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *e = x;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGraphMemTrim(CUdevice d)
{
    RECORD(cuDeviceGraphMemTrim);
    NEED_INIT();
    CHECK_DEV(d);
    pthread_mutex_lock(&devs[d].gmu);
    if (devs[d].g_reserved > devs[d].g_used) {
        give(d, devs[d].g_reserved - devs[d].g_used);
        devs[d].g_reserved = devs[d].g_used;
    }
    pthread_mutex_unlock(&devs[d].gmu);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetGraphMemAttribute(CUdevice d, CUgraphMem_attribute a, void *value)
{
    RECORD(cuDeviceGetGraphMemAttribute);
    NEED_INIT();
    CHECK_DEV(d);
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    cuuint64_t *v = value;
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&devs[d].gmu);
    switch (a) {
    case CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT: *v = devs[d].g_used; break;
    case CU_GRAPH_MEM_ATTR_USED_MEM_HIGH: *v = devs[d].g_used_high; break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: *v = devs[d].g_reserved; break;
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH: *v = devs[d].g_reserved_high; break;
    default: r = CUDA_ERROR_INVALID_VALUE; break;
    }
    pthread_mutex_unlock(&devs[d].gmu);
    return r;
}

API CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags)
{
    RECORD(cuGraphInstantiateWithFlags);
    (void)flags;
    return instantiate(e, g);
}

API CUresult cuGraphInstantiateWithParams(CUgraphExec *e, CUgraph g,
                                          CUDA_GRAPH_INSTANTIATE_PARAMS *params)
{
    RECORD(cuGraphInstantiateWithParams);
    (void)params;
    return instantiate(e, g);
}

API CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *e, CUgraph g,
                                               CUDA_GRAPH_INSTANTIATE_PARAMS *params)
{
    RECORD(cuGraphInstantiateWithParams_ptsz);
    (void)params;
    return instantiate(e, g);
}

static CUresult graph_launch(CUgraphExec e, CUstream s)
{
    NEED_INIT();
    if (!e)
        return CUDA_ERROR_INVALID_VALUE;
    return launch(s, e->work, 1, (CUfunction)(uintptr_t)1);
}

API CUresult cuGraphLaunch(CUgraphExec e, CUstream s)
{
    RECORD(cuGraphLaunch);
    return graph_launch(e, s);
}

API CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s)
{
    RECORD(cuGraphLaunch_ptsz);
    return graph_launch(e, s);
}

API CUresult cuGraphExecDestroy(CUgraphExec e)
{
    RECORD(cuGraphExecDestroy);
    NEED_INIT();
    if (e)
        gmem_map(e, -1);
    free(e);
    return CUDA_SUCCESS;
}

API CUresult cuGraphDestroy(CUgraph g)
{
    RECORD(cuGraphDestroy);
    NEED_INIT();
    free(g);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- cuGetProcAddress */

CUresult cuGetProcAddress(const char *symbol, void **pfn, int ver, cuuint64_t flags);
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int ver, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status);

struct export {
    const char *name;
    void *fn;
};
#define X(f) {#f, (void *)f},
static const struct export exports[] = {
    X(cuInit) X(cuDriverGetVersion) X(cuGetErrorName) X(cuGetErrorString) X(cuGetExportTable)
    X(cuGetProcAddress) X(cuGetProcAddress_v2) X(cuDeviceGetCount) X(cuDeviceGet)
    X(cuDeviceGetName) X(cuDeviceGetUuid) X(cuDeviceGetUuid_v2) X(cuDeviceTotalMem)
    X(cuDeviceTotalMem_v2) X(cuDeviceGetAttribute) X(cuDeviceGetPCIBusId)
    X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuDevicePrimaryCtxRelease_v2)
    X(cuCtxCreate) X(cuCtxCreate_v2) X(cuCtxCreate_v3) X(cuCtxCreate_v4) X(cuCtxDestroy)
    X(cuCtxDestroy_v2) X(cuCtxGetCurrent) X(cuCtxSetCurrent) X(cuCtxPushCurrent_v2)
    X(cuCtxPopCurrent_v2) X(cuCtxGetDevice) X(cuCtxSynchronize) X(cuCtxSetLimit) X(cuCtxGetLimit)
    X(cuMemGetInfo) X(cuMemGetInfo_v2) X(cuMemAlloc_v2) X(cuMemAllocManaged) X(cuMemAllocPitch_v2)
    X(cuMemFree_v2) X(cuMemAllocAsync) X(cuMemAllocAsync_ptsz) X(cuMemAllocFromPoolAsync)
    X(cuMemAllocFromPoolAsync_ptsz) X(cuMemFreeAsync) X(cuMemFreeAsync_ptsz) X(cuMemPoolCreate)
    X(cuMemPoolDestroy) X(cuMemPoolTrimTo) X(cuMemPoolGetAttribute) X(cuMemPoolSetAttribute)
    X(cuDeviceGetDefaultMemPool) X(cuDeviceGetMemPool) X(cuDeviceSetMemPool)
    X(cuMemGetAllocationGranularity) X(cuMemCreate) X(cuMemRelease) X(cuMemAddressReserve)
    X(cuMemAddressFree) X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess) X(cuArrayCreate_v2)
    X(cuArray3DCreate_v2) X(cuArrayDestroy) X(cuArrayGetMemoryRequirements)
    X(cuMipmappedArrayCreate) X(cuMipmappedArrayDestroy) X(cuMipmappedArrayGetMemoryRequirements)
    X(cuMemAllocHost_v2) X(cuMemHostAlloc) X(cuMemFreeHost) X(cuMemHostRegister_v2)
    X(cuMemHostUnregister) X(cuMemcpyHtoD_v2) X(cuMemcpyDtoH_v2) X(cuMemsetD8_v2)
    X(cuPointerGetAttribute) X(cuPointerGetAttributes) X(cuMemGetAddressRange_v2) X(cuMemAdvise)
    X(cuMemAdvise_v2) X(cuMemPrefetchAsync) X(cuMemPrefetchAsync_ptsz) X(cuMemPrefetchAsync_v2)
    X(cuMemPrefetchAsync_v2_ptsz) X(cuStreamCreate) X(cuStreamDestroy_v2) X(cuStreamSynchronize)
    X(cuLaunchKernel) X(cuLaunchKernel_ptsz) X(cuLaunchKernelEx) X(cuLaunchKernelEx_ptsz)
    X(cuLaunchCooperativeKernel) X(cuLaunchCooperativeKernel_ptsz) X(cuGraphCreate)
    X(cuGraphAddKernelNode_v2) X(cuGraphInstantiateWithFlags) X(cuGraphInstantiateWithParams)
    X(cuGraphInstantiateWithParams_ptsz) X(cuGraphGetNodes) X(cuGraphNodeGetType)
    X(cuGraphKernelNodeGetParams_v2) X(cuGraphLaunch)
    X(cuGraphLaunch_ptsz) X(cuGraphExecDestroy) X(cuGraphDestroy) X(cuGraphAddMemAllocNode)
    X(cuGraphAddMemFreeNode) X(cuGraphMemAllocNodeGetParams) X(cuDeviceGraphMemTrim)
    X(cuDeviceGetGraphMemAttribute) X(cuModuleLoad) X(cuModuleLoadData) X(cuModuleLoadDataEx)
    X(cuModuleLoadFatBinary) X(cuModuleUnload) X(cuLibraryLoadData) X(cuLibraryLoadFromFile)
    X(cuLibraryUnload)
};
#undef X

/* (base name, first CUDA version, concrete entry point); later rows of a name win. */
struct versioned {
    const char *base;
    int since;
    const char *entry;
};
static const struct versioned versions[] = {
    {"cuCtxCreate", 2000, "cuCtxCreate"},
    {"cuCtxCreate", 3020, "cuCtxCreate_v2"},
    {"cuCtxCreate", 11040, "cuCtxCreate_v3"},
    {"cuCtxCreate", 12050, "cuCtxCreate_v4"},
    {"cuCtxDestroy", 2000, "cuCtxDestroy"},
    {"cuCtxDestroy", 4000, "cuCtxDestroy_v2"},
    {"cuCtxPushCurrent", 4000, "cuCtxPushCurrent_v2"},
    {"cuCtxPopCurrent", 4000, "cuCtxPopCurrent_v2"},
    {"cuDeviceTotalMem", 2000, "cuDeviceTotalMem"},
    {"cuDeviceTotalMem", 3020, "cuDeviceTotalMem_v2"},
    {"cuDeviceGetUuid", 9020, "cuDeviceGetUuid"},
    {"cuDeviceGetUuid", 11040, "cuDeviceGetUuid_v2"},
    {"cuDevicePrimaryCtxRelease", 7000, "cuDevicePrimaryCtxRelease"},
    {"cuDevicePrimaryCtxRelease", 11000, "cuDevicePrimaryCtxRelease_v2"},
    {"cuMemGetInfo", 2000, "cuMemGetInfo"},
    {"cuMemGetInfo", 3020, "cuMemGetInfo_v2"},
    {"cuMemAlloc", 3020, "cuMemAlloc_v2"},
    {"cuMemAllocPitch", 3020, "cuMemAllocPitch_v2"},
    {"cuMemFree", 3020, "cuMemFree_v2"},
    {"cuMemAllocHost", 3020, "cuMemAllocHost_v2"},
    {"cuMemHostRegister", 6050, "cuMemHostRegister_v2"},
    {"cuMemGetAddressRange", 3020, "cuMemGetAddressRange_v2"},
    {"cuMemcpyHtoD", 3020, "cuMemcpyHtoD_v2"},
    {"cuMemcpyDtoH", 3020, "cuMemcpyDtoH_v2"},
    {"cuMemsetD8", 3020, "cuMemsetD8_v2"},
    {"cuArrayCreate", 3020, "cuArrayCreate_v2"},
    {"cuArray3DCreate", 3020, "cuArray3DCreate_v2"},
    {"cuStreamDestroy", 4000, "cuStreamDestroy_v2"},
    {"cuMemAdvise", 8000, "cuMemAdvise"},
    {"cuMemAdvise", 12020, "cuMemAdvise_v2"},
    {"cuMemPrefetchAsync", 8000, "cuMemPrefetchAsync"},
    {"cuMemPrefetchAsync", 12020, "cuMemPrefetchAsync_v2"},
    {"cuGraphAddKernelNode", 12000, "cuGraphAddKernelNode_v2"},
    {"cuGraphInstantiate", 11040, "cuGraphInstantiateWithFlags"},
    {"cuGraphKernelNodeGetParams", 12000, "cuGraphKernelNodeGetParams_v2"},
    {"cuGetProcAddress", 11030, "cuGetProcAddress"},
    {"cuGetProcAddress", 12000, "cuGetProcAddress_v2"},
    {"cuMemAllocAsync", 11020, "cuMemAllocAsync"},
    {"cuMemFreeAsync", 11020, "cuMemFreeAsync"},
    {"cuMemAllocFromPoolAsync", 11020, "cuMemAllocFromPoolAsync"},
    {"cuLaunchKernelEx", 11060, "cuLaunchKernelEx"},
    {"cuMemCreate", 10020, "cuMemCreate"},
};

static void *find_export(const char *name)
{
    for (size_t i = 0; i < sizeof(exports) / sizeof(exports[0]); i++)
        if (!strcmp(exports[i].name, name))
            return exports[i].fn;
    return NULL;
}

static CUresult proc_address(const char *symbol, void **pfn, int ver, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status)
{
    ensure_config();
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    CUresult r = CUDA_ERROR_NOT_FOUND;
    void *fn = NULL;
    if (!symbol || !pfn) {
        r = CUDA_ERROR_INVALID_VALUE;
        goto out;
    }
    const char *entry = NULL;
    int known = 0;
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++)
        if (!strcmp(versions[i].base, symbol)) {
            known = 1;
            if (versions[i].since <= ver)
                entry = versions[i].entry;
        }
    if (known && !entry) {
        st = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
        goto out;
    }
    if (!entry)
        entry = symbol;
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        char buf[160];
        snprintf(buf, sizeof(buf), "%s_ptsz", entry);
        fn = find_export(buf);
        if (!fn) {
            snprintf(buf, sizeof(buf), "%s_ptds", entry);
            fn = find_export(buf);
        }
    }
    if (!fn)
        fn = find_export(entry);
    if (fn) {
        st = CU_GET_PROC_ADDRESS_SUCCESS;
        r = CUDA_SUCCESS;
    }
out:
    if (pfn)
        *pfn = fn;
    if (status)
        *status = st;
    return r;
}

API CUresult cuGetProcAddress(const char *symbol, void **pfn, int ver, cuuint64_t flags)
{
    RECORD(cuGetProcAddress);
    return proc_address(symbol, pfn, ver, flags, NULL);
}

API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int ver, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *status)
{
    RECORD(cuGetProcAddress_v2);
    return proc_address(symbol, pfn, ver, flags, status);
}

/* ---------------------------------------------------------------- control API (fakegpu.h) */

API unsigned long fakegpu_calls(const char *name)
{
    for (struct call_rec *r = atomic_load(&call_list); r; r = r->next)
        if (!strcmp(r->name, name))
            return atomic_load(&r->n);
    return 0;
}

API uint64_t fakegpu_used_bytes(int d)
{
    ensure_config();
    return d >= 0 && d < cuda_count ? atomic_load(&devs[d].used) : 0;
}

API void fakegpu_set_free_mib(int d, uint64_t mib)
{
    ensure_config();
    if (d < 0 || d >= cuda_count)
        return;
    uint64_t mem = tdev(d)->memory_bytes, want = mib << 20, used = atomic_load(&devs[d].used);
    atomic_store(&devs[d].external, want + used >= mem ? 0 : mem - want - used);
}

API uint64_t fakegpu_busy_ns(int d)
{
    ensure_config();
    return d >= 0 && d < cuda_count ? atomic_load(&devs[d].busy_ns) : 0;
}

API void fakegpu_clock(int d, uint64_t *done_ns, uint64_t *now_ns)
{
    ensure_config();
    *done_ns = 0;
    *now_ns = mono_ns();
    if (d >= 0 && d < cuda_count)
        clock_read(d, done_ns, now_ns);
}

/* The virtual clock of the device at `table_index` (for the stand-in NVML); 0 when this process
 * never launched on it. */
API void fakegpu_table_clock(int table_index, uint64_t *done_ns, uint64_t *now_ns)
{
    ensure_config();
    *done_ns = 0;
    *now_ns = mono_ns();
    for (int d = 0; d < cuda_count; d++)
        if (cuda_to_table[d] == table_index)
            clock_read(d, done_ns, now_ns);
}

/* Device memory the driver takes on its own (lazily loaded kernels, internal workspaces): only
 * NVML sees it. */
API void fakegpu_driver_alloc(int d, uint64_t bytes)
{
    ensure_config();
    if (d >= 0 && d < cuda_count)
        take(d, bytes);
}

API unsigned long fakegpu_contexts(int d)
{
    ensure_config();
    return d >= 0 && d < cuda_count ? atomic_load(&devs[d].contexts) : 0;
}

/* Bytes this process holds on the device at `table_index` of the config table (for the stand-in
 * NVML, whose state is per process). */
API uint64_t fakegpu_table_used_bytes(int table_index)
{
    ensure_config();
    for (int d = 0; d < cuda_count; d++)
        if (cuda_to_table[d] == table_index)
            return atomic_load(&own_used[d]);
    return 0;
}
