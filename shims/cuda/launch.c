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

#include <stdlib.h>

#include "alloc_map.h"
#include "limiter.h"
#include "shim.h"

#define TICK_NS 100000000ull  /* controller period */
#define SWEEP_NS 250000000ull /* dead-slot sweep period, container-wide */
#define RECONCILE_NS 1000000000ull /* NVML reconciliation of this process's memory */

static void sleep_ns(long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&ts, NULL);
}

/* Heartbeat and priority block; returns whether a compute limit may apply (then the caller
 * computes the launch's cost and calls hami_throttle). */
static inline int before_launch(void)
{
    struct hami_region_v1 *v1 = atomic_load_explicit(&hami_g.v1, memory_order_acquire);
    if (UNLIKELY(!v1))
        return 0;
    /* A fork child of an attached process: its own slot and watcher before its first launch. */
    if (UNLIKELY(atomic_load_explicit(&hami_g.attached_pid, memory_order_relaxed) != hami_g.pid) &&
        !hami_attach_slow())
        return 0;
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
    return UNLIKELY(atomic_load_explicit(&hami_g.limiter_any, memory_order_relaxed));
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
    int api; /* per-process utilisation API: 2 = ProcessesUtilizationInfo, 1 = ProcessUtilization,
                0 = device-wide utilisation only */
    int silent_ticks; /* consecutive ticks with launches but no per-process sample */
};

/* ------------------------------------------------------------------ measurement */

#define MAX_SAMPLES 64
#define PIDTAB 4096 /* > 2 x HAMI_MAX_PROCS: open addressing stays short */

/* The container's processes, by the PID NVML reports: hostpid when the node monitor filled it,
 * else the slot's pid (same PID namespace, or a container-level attribution, contract 7.1).
 * Built once per tick in O(proc_num); used only by the watcher thread. */
static struct {
    int32_t key[PIDTAB];
    int16_t slot[PIDTAB];
} pidtab;

static void pidtab_build(void)
{
    memset(pidtab.key, 0, sizeof(pidtab.key));
    struct hami_region_v1 *v1 = hami_g.sh.v1;
    int n = atomic_load(&v1->proc_num);
    for (int i = 0; i < n && i < HAMI_MAX_PROCS; i++) {
        if (!atomic_load_explicit(&v1->procs[i].status, memory_order_relaxed))
            continue;
        int32_t pid = atomic_load_explicit(&v1->procs[i].hostpid, memory_order_relaxed);
        if (!pid)
            pid = atomic_load_explicit(&v1->procs[i].pid, memory_order_relaxed);
        if (pid <= 0)
            continue;
        uint32_t h = ((uint32_t)pid * 2654435761u) % PIDTAB;
        while (pidtab.key[h] && pidtab.key[h] != pid)
            h = (h + 1) % PIDTAB;
        pidtab.key[h] = pid;
        pidtab.slot[h] = (int16_t)i;
    }
}

static int pidtab_slot(uint32_t pid)
{
    if (!pid || pid > INT32_MAX)
        return -1;
    uint32_t h = (pid * 2654435761u) % PIDTAB;
    while (pidtab.key[h]) {
        if (pidtab.key[h] == (int32_t)pid)
            return pidtab.slot[h];
        h = (h + 1) % PIDTAB;
    }
    return -1;
}

/* Utilisation (percent) of the container's processes on a device since the last sample used,
 * from NVML's per-process samples (the newer API first, then the older one; shim-contract.md 8),
 * averaged per process and summed over the container's processes, whose slots get their sm_util.
 * Returns -1 when there is no new sample. Without per-process data: device-wide utilisation. */
static double measure(int pos, struct dev_info *di, int launched)
{
    if (!di->nv)
        return -1;
    struct hami_ext_dev *ed = &hami_g.sh.ext->dev[pos];
    unsigned long long seen = atomic_load(&ed->util_seen_us), newest = seen;
    unsigned pid[MAX_SAMPLES], util[MAX_SAMPLES], n = 0;
    nvmlReturn_t r = NVML_ERROR_NOT_SUPPORTED;
    if (di->api == 2) {
        nvmlProcessUtilizationInfo_v1_t a[MAX_SAMPLES];
        nvmlProcessesUtilizationInfo_t info = {.version = nvmlProcessesUtilizationInfo_v1,
                                               .processSamplesCount = MAX_SAMPLES,
                                               .lastSeenTimeStamp = seen,
                                               .procUtilArray = a};
        r = hami_real_nv.nvmlDeviceGetProcessesUtilizationInfo(di->nv, &info);
        for (unsigned i = 0; r == NVML_SUCCESS && i < info.processSamplesCount && i < MAX_SAMPLES; i++) {
            pid[n] = a[i].pid;
            util[n++] = a[i].smUtil;
            newest = a[i].timeStamp > newest ? a[i].timeStamp : newest;
        }
        if (r != NVML_SUCCESS && r != NVML_ERROR_NOT_FOUND && r != NVML_ERROR_INSUFFICIENT_SIZE)
            di->api = hami_real_nv.nvmlDeviceGetProcessUtilization ? 1 : 0;
    }
    if (di->api == 1) {
        nvmlProcessUtilizationSample_t a[MAX_SAMPLES];
        unsigned cnt = MAX_SAMPLES;
        r = hami_real_nv.nvmlDeviceGetProcessUtilization(di->nv, a, &cnt, seen);
        for (unsigned i = 0; r == NVML_SUCCESS && i < cnt && i < MAX_SAMPLES; i++) {
            pid[n] = a[i].pid;
            util[n++] = a[i].smUtil;
            newest = a[i].timeStamp > newest ? a[i].timeStamp : newest;
        }
        if (r != NVML_SUCCESS && r != NVML_ERROR_NOT_FOUND && r != NVML_ERROR_INSUFFICIENT_SIZE)
            di->api = 0;
    }
    if (di->api == 0) {
        nvmlUtilization_t u;
        if (!hami_real_nv.nvmlDeviceGetUtilizationRates ||
            hami_real_nv.nvmlDeviceGetUtilizationRates(di->nv, &u) != NVML_SUCCESS)
            return -1;
        return (double)u.gpu;
    }
    if (r != NVML_SUCCESS || n == 0) {
        /* No sample newer than the last one used. A second of launches without any means the
         * per-process API delivers nothing here (Blackwell's older API, HAMi-core PR #218). */
        if (launched && ++di->silent_ticks >= 10) {
            LOG_INFO("device %d: NVML reports no per-process utilisation; the compute limiter "
                     "uses device-wide utilisation", pos);
            di->api = 0;
        }
        return -1;
    }
    di->silent_ticks = 0;
    atomic_store(&ed->util_seen_us, newest);
    /* several samples of one process: their average; then the sum over the container */
    double total = 0;
    for (unsigned i = 0; i < n; i++) {
        if (pid[i] == 0)
            continue;
        unsigned long long sum = util[i];
        unsigned k = 1;
        for (unsigned j = i + 1; j < n; j++)
            if (pid[j] == pid[i]) {
                sum += util[j];
                k++;
                pid[j] = 0;
            }
        int slot = pidtab_slot(pid[i]);
        if (slot < 0)
            continue; /* another container's process */
        double avg = (double)sum / k;
        total += avg;
        atomic_store_explicit(&hami_g.sh.v1->procs[slot].device_util[pos].sm_util,
                              (uint64_t)(avg + 0.5), memory_order_relaxed);
    }
    return total > 100 ? 100 : total;
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
    int64_t tokens = atomic_load(&ed->tokens);
    int64_t used = atomic_load(&ed->tokens_after) - tokens;
    double util = measure(pos, di, used > 0);
    if (util >= 0) {
        /* Anti-windup: when the launches did not use all the tokens of the last tick (the device,
         * or the application, was the bottleneck), the measured utilisation belongs to the rate
         * actually consumed, not to the configured one: step from that. */
        double target = (double)hami_g.sh.v1->sm_limit[pos], base = rate;
        int64_t per_rate = hami_ctl_refill(1.0, di->sms, di->threads_per_sm, dt);
        if (util > target && tokens > 0 && used > 0 && per_rate > 0 &&
            (double)used / (double)per_rate < rate)
            base = (double)used / (double)per_rate;
        rate = hami_ctl_step(base, target, util, tokens <= 0);
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
    atomic_store(&ed->tokens_after, next);
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
        di->api = hami_real_nv.nvmlDeviceGetProcessesUtilizationInfo ? 2
                  : hami_real_nv.nvmlDeviceGetProcessUtilization      ? 1
                                                                      : 0;
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
        info[i] = (struct dev_info){-1, 0, 0, NULL, 0, 0};
    int have_devices = 0;
    int32_t me = hami_g.pid;
    uint64_t last_recon = 0;
    while (hami_g.pid == me) {
        int limiting = atomic_load(&hami_g.limiter_any);
        if (limiting) {
            if (!have_devices) {
                setup_devices(info);
                have_devices = 1;
            }
            pidtab_build();
            for (int pos = 0; pos < HAMI_MAX_DEVICES; pos++)
                if (info[pos].ordinal >= 0 && device_limited(pos))
                    tick_device(pos, &info[pos]);
        }
        uint64_t now = hami_monotonic_ns();
        hami_sweep_dead(&hami_g.sh, now, SWEEP_NS);
        if (now - last_recon >= RECONCILE_NS) {
            last_recon = now;
            hami_reconcile_periodic();
        }
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
        if (LIKELY(!hami_g.disabled) && before_launch())                                       \
            hami_throttle(s, GRID(gx, gy, gz, bx, by, bz));                                    \
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
        if (LIKELY(!hami_g.disabled) && before_launch())                                       \
            hami_throttle(s, GRID(gx, gy, gz, bx, by, bz));                                    \
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
        if (LIKELY(!hami_g.disabled) && before_launch() && c)                                   \
            hami_throttle(c->hStream, GRID(c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, \
                                           c->blockDimY, c->blockDimZ));                        \
        return hami_real.name(c, f, params, extra);                                             \
    }

EX_WRAPPER(cuLaunchKernelEx)
EX_WRAPPER(cuLaunchKernelEx_ptsz)

/* ------------------------------------------------------------------ graphs */

/* Kernel work of a graph: blocks x threads summed over its kernel nodes, child graphs included. */
static uint64_t graph_work(CUgraph g, int depth)
{
    size_t n = 0;
    if (!g || depth > 8 || hami_real.cuGraphGetNodes(g, NULL, &n) != CUDA_SUCCESS || n == 0)
        return 0;
    CUgraphNode *nodes = calloc(n, sizeof(*nodes));
    if (!nodes)
        return 0;
    uint64_t work = 0;
    if (hami_real.cuGraphGetNodes(g, nodes, &n) == CUDA_SUCCESS) {
        for (size_t i = 0; i < n; i++) {
            CUgraphNodeType t;
            if (!nodes[i] || hami_real.cuGraphNodeGetType(nodes[i], &t) != CUDA_SUCCESS)
                continue;
            CUDA_KERNEL_NODE_PARAMS p;
            CUgraph child;
            if (t == CU_GRAPH_NODE_TYPE_KERNEL &&
                hami_real.cuGraphKernelNodeGetParams_v2(nodes[i], &p) == CUDA_SUCCESS)
                work += GRID(p.gridDimX, p.gridDimY, p.gridDimZ, p.blockDimX, p.blockDimY,
                             p.blockDimZ);
            else if (t == CU_GRAPH_NODE_TYPE_GRAPH && hami_real.cuGraphChildGraphNodeGetGraph &&
                     hami_real.cuGraphChildGraphNodeGetGraph(nodes[i], &child) == CUDA_SUCCESS)
                work += graph_work(child, depth + 1);
        }
    }
    free(nodes);
    return work;
}

/* After a successful instantiation under a compute limit: remember the executable graph's cost. */
static CUresult graph_instantiated(CUresult r, CUgraphExec *e, CUgraph g)
{
    if (r != CUDA_SUCCESS || !e || !*e || hami_g.disabled || !hami_attached() ||
        !atomic_load(&hami_g.limiter_any) || !hami_real.cuGraphGetNodes ||
        !hami_real.cuGraphNodeGetType || !hami_real.cuGraphKernelNodeGetParams_v2)
        return r;
    uint64_t work = graph_work(g, 0);
    if (work)
        hami_map_put(HAMI_K_GRAPH, (uint64_t)(uintptr_t)*e, 0, work, NULL);
    return r;
}

struct inst_args {
    int variant; /* 0 WithFlags, 1 WithParams, 2 WithParams_ptsz */
    CUgraphExec *e;
    CUgraph g;
    unsigned long long flags;
    CUDA_GRAPH_INSTANTIATE_PARAMS *p;
};

static CUresult call_instantiate(void *arg)
{
    struct inst_args *a = arg;
    switch (a->variant) {
    case 0: return hami_real.cuGraphInstantiateWithFlags(a->e, a->g, a->flags);
    case 1: return hami_real.cuGraphInstantiateWithParams(a->e, a->g, a->p);
    default: return hami_real.cuGraphInstantiateWithParams_ptsz(a->e, a->g, a->p);
    }
}

static CUresult instantiate(struct inst_args *a, const char *api)
{
    CUresult r = hami_graph_mem_instantiate(call_instantiate, a, a->e, a->g, api);
    if (r == CUDA_ERROR_OUT_OF_MEMORY && a->p)
        a->p->result_out = CUDA_GRAPH_INSTANTIATE_ERROR;
    return graph_instantiated(r, a->e, a->g);
}

HAMI_SHIM_API CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuGraphInstantiateWithFlags))
        return CUDA_ERROR_NOT_SUPPORTED;
    struct inst_args a = {0, e, g, flags, NULL};
    return instantiate(&a, "cuGraphInstantiateWithFlags");
}

HAMI_SHIM_API CUresult cuGraphInstantiateWithParams(CUgraphExec *e, CUgraph g,
                                                    CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuGraphInstantiateWithParams))
        return CUDA_ERROR_NOT_SUPPORTED;
    struct inst_args a = {1, e, g, 0, p};
    return instantiate(&a, "cuGraphInstantiateWithParams");
}

HAMI_SHIM_API CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *e, CUgraph g,
                                                         CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuGraphInstantiateWithParams_ptsz))
        return CUDA_ERROR_NOT_SUPPORTED;
    struct inst_args a = {2, e, g, 0, p};
    return instantiate(&a, "cuGraphInstantiateWithParams_ptsz");
}

HAMI_SHIM_API CUresult cuGraphExecDestroy(CUgraphExec e)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuGraphExecDestroy))
        return CUDA_ERROR_NOT_SUPPORTED;
    struct hami_entry ent;
    if (e && !hami_g.disabled)
        hami_map_take(HAMI_K_GRAPH, (uint64_t)(uintptr_t)e, &ent);
    return hami_graph_mem_destroy(e);
}

/* Graph launches are gated by the same bucket (HAMi#1445) and cost the kernel work recorded at
 * instantiation (one token for a graph instantiated without a compute limit or with no kernels
 * the driver describes; graph updates after instantiation are not re-costed). */
static uint64_t graph_cost(CUgraphExec g)
{
    struct hami_entry e;
    return hami_map_get(HAMI_K_GRAPH, (uint64_t)(uintptr_t)g, &e) ? e.size : 1;
}

#define GRAPH_WRAPPER(name)                                                       \
    HAMI_SHIM_API CUresult name(CUgraphExec g, CUstream s)                        \
    {                                                                             \
        hami_init();                                                              \
        if (UNLIKELY(!hami_real.name))                                            \
            return CUDA_ERROR_NOT_SUPPORTED;                                      \
        if (LIKELY(!hami_g.disabled) && before_launch())                          \
            hami_throttle(s, graph_cost(g));                                      \
        CUresult r = hami_real.name(g, s);                                        \
        if (UNLIKELY(atomic_load_explicit(&hami_graphmem_pending, memory_order_relaxed)) && \
            r == CUDA_SUCCESS)                                                    \
            hami_graph_mem_launched(g);                                           \
        return r;                                                                 \
    }

GRAPH_WRAPPER(cuGraphLaunch)
GRAPH_WRAPPER(cuGraphLaunch_ptsz)
