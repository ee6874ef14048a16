/* Stand-in NVML (libnvidia-ml.so.1) for tests without a GPU.
 *
 * Serves the shim's tests and the NVIDIA device plugin's discovery (through pynvml, which loads it
 * by soname from LD_LIBRARY_PATH). Devices come from HAMI_FAKE_GPU_CONFIG in table order (NVML
 * ignores CUDA_VISIBLE_DEVICES, as the real library does). XID events: `xid <uuid> <code>` lines,
 * re-read from the config file while nvmlEventSetWait_v2 waits, so a test can append them.
 */
#include <nvml.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "fakecfg.h"

#define API __attribute__((visibility("default")))

struct nvmlDevice_st {
    int index;
};

struct nvmlEventSet_st {
    pthread_mutex_t mu;
    unsigned long long types[FAKE_MAX_DEVICES];
    int delivered;
};

static struct fake_config cfg;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int init_count; /* read without the lock by NEED_INIT */
static int loaded;
static struct nvmlDevice_st handles[FAKE_MAX_DEVICES];

#define NEED_INIT()                           \
    do {                                      \
        if (!atomic_load(&init_count))        \
            return NVML_ERROR_UNINITIALIZED;  \
    } while (0)

#define CHECK_HANDLE(h)                                                        \
    do {                                                                       \
        if (!(h) || (h) < handles || (h) >= handles + cfg.ndev)                \
            return NVML_ERROR_INVALID_ARGUMENT;                                \
    } while (0)

static nvmlReturn_t do_init(void)
{
    pthread_mutex_lock(&mu);
    if (!loaded) {
        fakecfg_load(&cfg);
        for (int i = 0; i < FAKE_MAX_DEVICES; i++)
            handles[i].index = i;
        loaded = 1;
    }
    atomic_fetch_add(&init_count, 1);
    pthread_mutex_unlock(&mu);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlInit_v2(void) { return do_init(); }
API nvmlReturn_t nvmlInit(void) { return do_init(); }

API nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return do_init();
}

API nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&mu);
    nvmlReturn_t r = init_count ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (init_count)
        atomic_fetch_sub(&init_count, 1);
    pthread_mutex_unlock(&mu);
    return r;
}

API const char *nvmlErrorString(nvmlReturn_t r)
{
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_str(char *dst, unsigned int len, const char *src)
{
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned int len)
{
    NEED_INIT();
    return copy_str(v, len, cfg.nvml_driver_version);
}

API nvmlReturn_t nvmlSystemGetNVMLVersion(char *v, unsigned int len)
{
    NEED_INIT();
    char buf[96];
    snprintf(buf, sizeof(buf), "13.%s", cfg.nvml_driver_version);
    return copy_str(v, len, buf);
}

API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v)
{
    NEED_INIT();
    if (!v)
        return NVML_ERROR_INVALID_ARGUMENT;
    *v = cfg.driver_version;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v)
{
    return nvmlSystemGetCudaDriverVersion(v);
}

/* Stall points shared with the stand-in CUDA driver (fakegpu_stall_arm, fork tests). */
static void stall_point(const char *name)
{
    typedef void (*stall_fn)(const char *);
    stall_fn f = (stall_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "fakegpu_stall_point");
    if (f)
        f(name);
}

API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n)
{
    stall_point("nvmlDeviceGetCount_v2");
    NEED_INIT();
    if (!n)
        return NVML_ERROR_INVALID_ARGUMENT;
    *n = (unsigned)cfg.ndev;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return nvmlDeviceGetCount_v2(n); }

API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *h)
{
    NEED_INIT();
    if (!h || i >= (unsigned)cfg.ndev)
        return NVML_ERROR_INVALID_ARGUMENT;
    *h = &handles[i];
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *h)
{
    return nvmlDeviceGetHandleByIndex_v2(i, h);
}

API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *h)
{
    NEED_INIT();
    if (!uuid || !h)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < cfg.ndev; i++)
        if (!strcasecmp(cfg.dev[i].uuid, uuid)) {
            *h = &handles[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}

static void bus_id(int i, char *out, size_t len)
{
    snprintf(out, len, "%08X:%02X:%02X.0", cfg.dev[i].pci_domain, cfg.dev[i].pci_bus,
             cfg.dev[i].pci_dev);
}

API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *id, nvmlDevice_t *h)
{
    NEED_INIT();
    if (!id || !h)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < cfg.ndev; i++) {
        char b[32];
        bus_id(i, b, sizeof(b));
        size_t n = strlen(id);
        if (!strcasecmp(b, id) || (n >= 12 && !strcasecmp(b + strlen(b) - n, id))) {
            *h = &handles[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned int len)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    return copy_str(uuid, len, cfg.dev[h->index].uuid);
}

API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t h, unsigned int *i)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!i)
        return NVML_ERROR_INVALID_ARGUMENT;
    *i = (unsigned)h->index;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t h, char *name, unsigned int len)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    return copy_str(name, len, cfg.dev[h->index].name);
}

API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t h, unsigned int *minor)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    *minor = (unsigned)cfg.dev[h->index].minor;
    return NVML_SUCCESS;
}

/* Used memory: other tenants (external_used_mib) + what the stand-in CUDA driver in this process
 * holds on that device. */
static unsigned long long used_bytes(int i)
{
    typedef uint64_t (*used_fn)(int);
    used_fn f = (used_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "fakegpu_table_used_bytes");
    unsigned long long u = cfg.external_used + (f ? f(i) : 0);
    return u > cfg.dev[i].memory_bytes ? cfg.dev[i].memory_bytes : u;
}

API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!m)
        return NVML_ERROR_INVALID_ARGUMENT;
    m->total = cfg.dev[h->index].memory_bytes;
    m->used = used_bytes(h->index);
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!m)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (m->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    m->total = cfg.dev[h->index].memory_bytes;
    m->reserved = 0;
    m->used = used_bytes(h->index);
    m->free = m->total - m->used;
    return NVML_SUCCESS;
}

static nvmlReturn_t pci_info(nvmlDevice_t h, nvmlPciInfo_t *p)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!p)
        return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_device *d = &cfg.dev[h->index];
    memset(p, 0, sizeof(*p));
    p->domain = d->pci_domain;
    p->bus = d->pci_bus;
    p->device = d->pci_dev;
    p->pciDeviceId = 0x20b010deu;
    p->pciSubSystemId = 0x134f10deu;
    bus_id(h->index, p->busId, sizeof(p->busId));
    snprintf(p->busIdLegacy, sizeof(p->busIdLegacy), "%04X:%02X:%02X.0", d->pci_domain & 0xffff,
             d->pci_bus, d->pci_dev);
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t h, nvmlPciInfo_t *p) { return pci_info(h, p); }
API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t h, nvmlPciInfo_t *p) { return pci_info(h, p); }
API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t h, nvmlPciInfo_t *p) { return pci_info(h, p); }

API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t h, unsigned int *cur, unsigned int *pending)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    int m = cfg.dev[h->index].mig;
    if (m < 0)
        return NVML_ERROR_NOT_SUPPORTED;
    if (!cur || !pending)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cur = *pending = (unsigned)m;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t h, int *major, int *minor)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!major || !minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    *major = 8;
    *minor = 0;
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- utilisation (virtual clock) */

/* Utilisation comes from the stand-in CUDA driver's virtual clock in this process (so only this
 * process's launches are seen): each query closes a sample covering the time since the previous
 * query of the same kind (at least 1 ms), with util = executed device time / elapsed time. The
 * last SAMPLES samples are kept, with CLOCK_MONOTONIC timestamps in microseconds. */
#define SAMPLES 32

struct sampler {
    int have_prev;
    uint64_t prev_done, prev_t;
    unsigned n, head;
    struct {
        unsigned long long ts_us;
        unsigned util;
    } ring[SAMPLES];
};

static struct sampler proc_samplers[FAKE_MAX_DEVICES], rate_samplers[FAKE_MAX_DEVICES];

static int read_clock(int index, uint64_t *done, uint64_t *now)
{
    typedef void (*clock_fn)(int, uint64_t *, uint64_t *);
    clock_fn f = (clock_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "fakegpu_table_clock");
    if (!f)
        return -1;
    f(index, done, now);
    return 0;
}

/* Closes a sample if at least 1 ms passed since the previous one; called with `mu` held. Like
 * NVML's per-process lists, `busy_only` samplers keep only intervals with some utilisation. */
static void sample(struct sampler *sp, int index, int busy_only)
{
    uint64_t done = 0, now = 0;
    if (read_clock(index, &done, &now) != 0)
        return;
    if (sp->have_prev && now - sp->prev_t >= 1000000ull) {
        uint64_t busy = done - sp->prev_done, span = now - sp->prev_t;
        unsigned util = (unsigned)(busy >= span ? 100 : (busy * 100 + span / 2) / span);
        if (busy_only && util == 0)
            goto out;
        sp->ring[sp->head].ts_us = now / 1000;
        sp->ring[sp->head].util = util;
        sp->head = (sp->head + 1) % SAMPLES;
        if (sp->n < SAMPLES)
            sp->n++;
    }
out:
    if (!sp->have_prev || now - sp->prev_t >= 1000000ull) {
        sp->have_prev = 1;
        sp->prev_done = done;
        sp->prev_t = now;
    }
}

/* The samples newer than `last_seen`, oldest first; returns their count. */
static unsigned newer(const struct sampler *sp, unsigned long long last_seen,
                      unsigned long long *ts, unsigned *util, unsigned max)
{
    unsigned k = 0;
    for (unsigned i = 0; i < sp->n && k < max; i++) {
        unsigned j = (sp->head + SAMPLES - sp->n + i) % SAMPLES;
        if (sp->ring[j].ts_us > last_seen) {
            ts[k] = sp->ring[j].ts_us;
            util[k++] = sp->ring[j].util;
        }
    }
    return k;
}

static unsigned int host_pid(void) { return (unsigned)(getpid() + cfg.host_pid_offset); }

API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!u)
        return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&mu);
    struct sampler *sp = &rate_samplers[h->index];
    sample(sp, h->index, 0);
    u->gpu = sp->n ? sp->ring[(sp->head + SAMPLES - 1) % SAMPLES].util : 0;
    u->memory = 0;
    pthread_mutex_unlock(&mu);
    return NVML_SUCCESS;
}

/* The older per-process API: one entry per sample of this process newer than lastSeen. With
 * `process_util_samples = none` it finds nothing, as on Blackwell (HAMi-core PR #218). */
API nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t h, nvmlProcessUtilizationSample_t *out,
                                                 unsigned int *count, unsigned long long last_seen)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (cfg.old_util_api_empty)
        return NVML_ERROR_NOT_FOUND;
    unsigned long long ts[SAMPLES];
    unsigned util[SAMPLES];
    pthread_mutex_lock(&mu);
    sample(&proc_samplers[h->index], h->index, 1);
    unsigned k = newer(&proc_samplers[h->index], last_seen, ts, util, SAMPLES);
    pthread_mutex_unlock(&mu);
    if (k == 0)
        return NVML_ERROR_NOT_FOUND;
    if (!out || *count < k) {
        *count = k;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < k; i++)
        out[i] = (nvmlProcessUtilizationSample_t){.pid = host_pid(), .timeStamp = ts[i],
                                                  .smUtil = util[i]};
    *count = k;
    return NVML_SUCCESS;
}

/* The newer API: one entry per process (its latest sample newer than lastSeenTimeStamp). With
 * `processes_util_info = unsupported` it is not supported, as before driver R550. */
API nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t h,
                                                       nvmlProcessesUtilizationInfo_t *info)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!info)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (cfg.new_util_api_missing)
        return NVML_ERROR_NOT_SUPPORTED;
    if (info->version != nvmlProcessesUtilizationInfo_v1)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long ts[SAMPLES];
    unsigned util[SAMPLES];
    pthread_mutex_lock(&mu);
    sample(&proc_samplers[h->index], h->index, 1);
    unsigned k = newer(&proc_samplers[h->index], info->lastSeenTimeStamp, ts, util, SAMPLES);
    pthread_mutex_unlock(&mu);
    if (k == 0)
        return NVML_ERROR_NOT_FOUND;
    if (!info->procUtilArray || info->processSamplesCount < 1) {
        info->processSamplesCount = 1;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    /* the average over the samples since lastSeen, stamped with the newest */
    unsigned long long sum = 0;
    for (unsigned i = 0; i < k; i++)
        sum += util[i];
    info->procUtilArray[0] = (nvmlProcessUtilizationInfo_v1_t){
        .timeStamp = ts[k - 1], .pid = host_pid(), .smUtil = (unsigned)(sum / k)};
    info->processSamplesCount = 1;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *count,
                                                         nvmlProcessInfo_t *infos)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* Only the calling process is visible (the stand-in's state is per process): listed with what
     * the stand-in CUDA driver holds for it on that device, when that is not zero. */
    typedef uint64_t (*used_fn)(int);
    used_fn f = (used_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "fakegpu_table_used_bytes");
    uint64_t used = f ? f(h->index) : 0;
    unsigned n = used ? 1 : 0, room = *count;
    *count = n;
    if (n > room)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    if (n) {
        if (!infos)
            return NVML_ERROR_INVALID_ARGUMENT;
        infos[0] = (nvmlProcessInfo_t){.pid = host_pid(), .usedGpuMemory = used,
                                       .gpuInstanceId = 0xFFFFFFFFu,
                                       .computeInstanceId = 0xFFFFFFFFu};
    }
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t a, nvmlDevice_t b,
                                                     nvmlGpuTopologyLevel_t *level)
{
    NEED_INIT();
    (void)a, (void)b, (void)level;
    return NVML_ERROR_NOT_SUPPORTED;
}

API nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t h, unsigned int link, nvmlEnableState_t *s)
{
    NEED_INIT();
    (void)h, (void)link, (void)s;
    return NVML_ERROR_NOT_SUPPORTED;
}

/* ---------------------------------------------------------------- events */

#define SUPPORTED_EVENTS (nvmlEventTypeXidCriticalError | nvmlEventTypeDoubleBitEccError | \
                          nvmlEventTypeSingleBitEccError)

API nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t h, unsigned long long *types)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!types)
        return NVML_ERROR_INVALID_ARGUMENT;
    *types = SUPPORTED_EVENTS;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    NEED_INIT();
    if (!set)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct nvmlEventSet_st *s = calloc(1, sizeof(*s));
    if (!s)
        return NVML_ERROR_MEMORY;
    pthread_mutex_init(&s->mu, NULL);
    *set = s;
    return NVML_SUCCESS;
}

API nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t h, unsigned long long types,
                                          nvmlEventSet_t set)
{
    NEED_INIT();
    CHECK_HANDLE(h);
    if (!set)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (types & ~(unsigned long long)SUPPORTED_EVENTS)
        return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&set->mu);
    set->types[h->index] |= types;
    pthread_mutex_unlock(&set->mu);
    return NVML_SUCCESS;
}

static int next_event(nvmlEventSet_t set, nvmlEventData_t *data)
{
    pthread_mutex_lock(&mu);
    int n = fakecfg_reload_xids(&cfg);
    int found = 0;
    pthread_mutex_lock(&set->mu);
    while (set->delivered < n && !found) {
        struct fake_xid x = cfg.xid[set->delivered++];
        if (set->types[x.device] & nvmlEventTypeXidCriticalError) {
            data->device = &handles[x.device];
            data->eventType = nvmlEventTypeXidCriticalError;
            data->eventData = x.code;
            data->gpuInstanceId = 0xffffffffu;
            data->computeInstanceId = 0xffffffffu;
            found = 1;
        }
    }
    pthread_mutex_unlock(&set->mu);
    pthread_mutex_unlock(&mu);
    return found;
}

API nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                     unsigned int timeoutms)
{
    NEED_INIT();
    if (!set || !data)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec start, now, tick = {0, 10 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (next_event(set, data))
            return NVML_SUCCESS;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long ms = (now.tv_sec - start.tv_sec) * 1000LL + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (ms >= (long long)timeoutms)
            return NVML_ERROR_TIMEOUT;
        nanosleep(&tick, NULL);
    }
}

API nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return nvmlEventSetWait_v2(set, data, timeoutms);
}

API nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    NEED_INIT();
    if (!set)
        return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_destroy(&set->mu);
    free(set);
    return NVML_SUCCESS;
}
