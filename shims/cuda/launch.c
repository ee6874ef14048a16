/* Launch wrappers: heartbeat, priority block and compute throttling (shim-contract.md 8).
 *
 * Every launch (plain, Ex, cooperative, graph; legacy and per-thread-stream variants) writes the
 * heartbeat (recent_kernel = 2, only when it is not already 2) and honours the monitor's priority
 * block (recent_kernel < 0) regardless of the utilisation switch (8.3). Without an active compute
 * limit the path makes no driver call and no system call (coarse clocks come from the vDSO).
 * With one, each launch takes blocks x threads tokens from the device's container-wide bucket,
 * which one process per tick refills from the controller in common/limiter.c.
 */
#include <math.h>
#include <signal.h>
#include <string.h>

#include "limiter.h"
#include "shim.h"

#define TICK_NS 100000000ull  /* controller period */
#define SWEEP_NS 250000000ull /* dead-slot sweep period, container-wide */

static void sleep_ns(long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&ts, NULL);
}

static inline void before_launch(CUstream stream, uint64_t cost)
{
    struct hami_region_v1 *v1 = atomic_load_explicit(&hami_g.v1, memory_order_acquire);
    if (UNLIKELY(!v1))
        return;
    int rk = atomic_load_explicit(&v1->recent_kernel, memory_order_relaxed);
    if (UNLIKELY(rk != 2)) {
        while (rk < 0) { /* blocked by the monitor for a higher-priority container */
            sleep_ns(100000000L);
            rk = atomic_load_explicit(&v1->recent_kernel, memory_order_relaxed);
        }
        atomic_store_explicit(&v1->recent_kernel, 2, memory_order_relaxed);
    }
    uint64_t now = hami_coarse_realtime_s();
    if (UNLIKELY(now - atomic_load_explicit(&hami_g.last_kernel_s, memory_order_relaxed) >=
                 (uint64_t)hami_g.record_interval_s)) {
        atomic_store_explicit(&hami_g.last_kernel_s, now, memory_order_relaxed);
        atomic_store_explicit(&v1->last_kernel_time, now, memory_order_relaxed);
    }
    if (UNLIKELY(atomic_load_explicit(&hami_g.limiter_any, memory_order_relaxed)))
        hami_throttle(stream, cost);
}

/* ------------------------------------------------------------------ throttling */

static int device_limited(int pos)
{
    struct hami_region_v1 *v1 = hami_g.sh.v1;
    uint64_t sm = v1->sm_limit[pos];
    if (sm == 0 || sm >= 100 || hami_g.policy == HAMI_POLICY_DISABLE)
        return 0;
    return hami_g.policy == HAMI_POLICY_FORCE || atomic_load(&v1->utilization_switch) != 0;
}

void hami_throttle(CUstream stream, uint64_t cost)
{
    (void)stream;
    CUdevice d;
    if (hami_real.cuCtxGetDevice(&d) != CUDA_SUCCESS)
        return;
    int pos = hami_pos_of_ordinal(d);
    if (pos < 0 || !device_limited(pos))
        return;
    _Atomic int64_t *tokens = &hami_g.sh.ext->dev[pos].tokens;
    /* Wait for a refill while the bucket is empty; a launch may drive it negative once, which the
     * next refills pay back. If no process refilled for a second, run (never hang on a dead
     * refiller). */
    uint64_t start = 0;
    while (atomic_load_explicit(tokens, memory_order_relaxed) <= 0) {
        uint64_t now = hami_monotonic_ns();
        if (!start)
            start = now;
        else if (now - start > 1000000000ull &&
                 now - atomic_load(&hami_g.sh.ext->dev[pos].last_refill_ns) > 1000000000ull)
            break;
        sleep_ns(1000000L);
    }
    atomic_fetch_sub_explicit(tokens, (int64_t)(cost > INT64_MAX ? INT64_MAX : cost),
                              memory_order_relaxed);
}

struct dev_info {
    int ordinal; /* -1: not visible to this process */
    int sms, threads_per_sm;
    nvmlDevice_t nv;
};

static double measure(struct dev_info *di)
{
    nvmlUtilization_t u;
    if (!di->nv || !hami_real_nv.nvmlDeviceGetUtilizationRates ||
        hami_real_nv.nvmlDeviceGetUtilizationRates(di->nv, &u) != NVML_SUCCESS)
        return -1;
    return (double)u.gpu;
}

static void tick_device(int pos, struct dev_info *di)
{
    struct hami_ext_dev *ed = &hami_g.sh.ext->dev[pos];
    uint64_t now = hami_monotonic_ns(), last = atomic_load(&ed->last_refill_ns);
    if (now - last < TICK_NS * 9 / 10 || !atomic_compare_exchange_strong(&ed->last_refill_ns, &last, now))
        return; /* another process of the container drives this tick */
    double dt = last ? (double)(now - last) / 1e9 : 0.1;
    if (dt > 1.0)
        dt = 1.0;
    uint64_t bits = atomic_load(&ed->rate_bits);
    double rate;
    memcpy(&rate, &bits, sizeof(rate));
    if (!(rate > 0))
        rate = 1.0;
    double util = measure(di);
    int64_t tokens = atomic_load(&ed->tokens);
    if (util >= 0) {
        rate = hami_ctl_step(rate, (double)hami_g.sh.v1->sm_limit[pos], util, tokens <= 0);
        atomic_store(&ed->util_x100, (uint64_t)(util * 100));
    }
    memcpy(&bits, &rate, sizeof(bits));
    atomic_store(&ed->rate_bits, bits);
    int64_t add = hami_ctl_refill(rate, di->sms, di->threads_per_sm, dt);
    int64_t cap = 2 * hami_ctl_refill(rate, di->sms, di->threads_per_sm, TICK_NS / 1e9);
    int64_t cur = atomic_load(&ed->tokens), next;
    do {
        next = cur + add > cap ? cap : cur + add;
    } while (!atomic_compare_exchange_weak(&ed->tokens, &cur, next));
}

static void setup_devices(struct dev_info *info)
{
    int count = 0;
    if (!hami_real.cuDeviceGetAttribute)
        return;
    if (hami_real.cuDeviceGetCount)
        hami_real.cuDeviceGetCount(&count);
    hami_nvml_resolve();
    int nv = hami_real_nv.nvmlInit_v2 && hami_real_nv.nvmlInit_v2() == NVML_SUCCESS;
    for (int o = 0; o < count && o < 64; o++) {
        int pos = hami_pos_of_ordinal(o);
        if (pos < 0)
            continue;
        struct dev_info *di = &info[pos];
        di->ordinal = o;
        hami_real.cuDeviceGetAttribute(&di->sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, o);
        hami_real.cuDeviceGetAttribute(&di->threads_per_sm,
                                       CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, o);
        if (nv && hami_real_nv.nvmlDeviceGetHandleByUUID &&
            hami_real_nv.nvmlDeviceGetHandleByUUID(hami_g.sh.v1->uuids[pos], &di->nv) != NVML_SUCCESS)
            di->nv = NULL;
    }
}

/* The per-process watcher thread (started at attach, one per process): drives the compute
 * controller when a compute limit applies, and takes part in the container's dead-slot sweep
 * (hami_sweep_dead: one process per SWEEP_NS does the O(slots) check), so the usage of a process
 * killed with SIGKILL is released within about SWEEP_NS + SWEEP_NS / 2 while any process of the
 * container lives. */
static void *watcher(void *arg)
{
    (void)arg;
    struct dev_info info[HAMI_MAX_DEVICES];
    for (int i = 0; i < HAMI_MAX_DEVICES; i++)
        info[i] = (struct dev_info){-1, 0, 0, NULL};
    int have_devices = 0;
    int32_t me = hami_g.pid;
    while (hami_g.pid == me) {
        int limiting = atomic_load(&hami_g.limiter_any);
        if (limiting) {
            if (!have_devices) {
                setup_devices(info);
                have_devices = 1;
            }
            for (int pos = 0; pos < HAMI_MAX_DEVICES; pos++)
                if (info[pos].ordinal >= 0 && device_limited(pos))
                    tick_device(pos, &info[pos]);
        }
        hami_sweep_dead(&hami_g.sh, hami_monotonic_ns(), SWEEP_NS);
        sleep_ns(limiting ? (long)TICK_NS / 2 : (long)SWEEP_NS / 2);
    }
    return NULL;
}

static _Atomic int32_t watcher_pid;

void hami_watcher_start(void)
{
    int32_t cur = atomic_load(&watcher_pid);
    if (cur == hami_g.pid || !atomic_compare_exchange_strong(&watcher_pid, &cur, hami_g.pid))
        return;
    /* The thread takes no signals, so the application's handlers stay where they expect them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, watcher, NULL) != 0)
        LOG_ERROR("cannot start the watcher thread; launches are not throttled and dead processes' "
                  "usage is released only when a process registers or an allocation is refused");
    pthread_attr_destroy(&a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* ------------------------------------------------------------------ wrappers */

#define GRID(gx, gy, gz, bx, by, bz) ((uint64_t)(gx) * (gy) * (gz) * (uint64_t)(bx) * (by) * (bz))

#define LAUNCH_WRAPPER(name)                                                                   \
    HAMI_SHIM_API CUresult name(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, \
                                unsigned int bx, unsigned int by, unsigned int bz,               \
                                unsigned int shm, CUstream s, void **params, void **extra)       \
    {                                                                                          \
        hami_init();                                                                           \
        if (UNLIKELY(!hami_real.name))                                                         \
            return CUDA_ERROR_NOT_SUPPORTED;                                                   \
        if (LIKELY(!hami_g.disabled))                                                          \
            before_launch(s, GRID(gx, gy, gz, bx, by, bz));                                    \
        return hami_real.name(f, gx, gy, gz, bx, by, bz, shm, s, params, extra);               \
    }

LAUNCH_WRAPPER(cuLaunchKernel)
LAUNCH_WRAPPER(cuLaunchKernel_ptsz)

#define COOP_WRAPPER(name)                                                                     \
    HAMI_SHIM_API CUresult name(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, \
                                unsigned int bx, unsigned int by, unsigned int bz,               \
                                unsigned int shm, CUstream s, void **params)                     \
    {                                                                                          \
        hami_init();                                                                           \
        if (UNLIKELY(!hami_real.name))                                                         \
            return CUDA_ERROR_NOT_SUPPORTED;                                                   \
        if (LIKELY(!hami_g.disabled))                                                          \
            before_launch(s, GRID(gx, gy, gz, bx, by, bz));                                    \
        return hami_real.name(f, gx, gy, gz, bx, by, bz, shm, s, params);                      \
    }

COOP_WRAPPER(cuLaunchCooperativeKernel)
COOP_WRAPPER(cuLaunchCooperativeKernel_ptsz)

#define EX_WRAPPER(name)                                                                        \
    HAMI_SHIM_API CUresult name(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) \
    {                                                                                           \
        hami_init();                                                                            \
        if (UNLIKELY(!hami_real.name))                                                          \
            return CUDA_ERROR_NOT_SUPPORTED;                                                    \
        if (LIKELY(!hami_g.disabled) && c)                                                      \
            before_launch(c->hStream, GRID(c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, \
                                           c->blockDimY, c->blockDimZ));                        \
        return hami_real.name(c, f, params, extra);                                             \
    }

EX_WRAPPER(cuLaunchKernelEx)
EX_WRAPPER(cuLaunchKernelEx_ptsz)

/* Graph launches are gated by the same bucket (HAMi#1445): a launch waits while the bucket is empty.
 * Their cost is one token for now; costing a graph by its kernel nodes (walked at instantiate) is
 * not implemented yet. */
#define GRAPH_WRAPPER(name)                                                       \
    HAMI_SHIM_API CUresult name(CUgraphExec g, CUstream s)                        \
    {                                                                             \
        hami_init();                                                              \
        if (UNLIKELY(!hami_real.name))                                            \
            return CUDA_ERROR_NOT_SUPPORTED;                                      \
        if (LIKELY(!hami_g.disabled))                                             \
            before_launch(s, 1);                                                  \
        return hami_real.name(g, s);                                              \
    }

GRAPH_WRAPPER(cuGraphLaunch)
GRAPH_WRAPPER(cuGraphLaunch_ptsz)
