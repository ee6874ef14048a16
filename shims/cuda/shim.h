/* Internal declarations shared by the CUDA shim's translation units. */
#ifndef HAMI_SHIM_H
#define HAMI_SHIM_H

#include <cuda.h>
#include <nvml.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "log.h"
#include "region.h"

#define HAMI_SHIM_API __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

struct real_cuda {
#define HOOK(ret, name, params, args) ret(*name) params;
#define USE(ret, name, params) ret(*name) params;
#include "hooks.def"
};

struct real_nvml {
#define NVHOOK(ret, name, params, args) ret(*name) params;
#define NVUSE(ret, name, params) ret(*name) params;
#include "hooks.def"
};

extern struct real_cuda hami_real;
extern struct real_nvml hami_real_nv;

enum hami_policy { HAMI_POLICY_DEFAULT = 0, HAMI_POLICY_FORCE, HAMI_POLICY_DISABLE };

struct hami_state {
    atomic_int ready;           /* real CUDA entry points resolved */
    int disabled;               /* CUDA_DISABLE_CONTROL: pass everything through */
    int32_t pid;                /* cached getpid(), refreshed in the fork child */
    _Atomic int32_t attached_pid; /* == pid once this process has a slot */
    struct hami_shared sh;
    struct hami_region_v1 *_Atomic v1; /* fast path view of sh.v1 (NULL until attached) */
    int policy;
    int record_interval_s;      /* RECORD_KERNEL_INTERVAL */
    atomic_int limiter_any;     /* some device has 0 < sm_limit < 100 */
    atomic_uint_least64_t last_kernel_s;
};

extern struct hami_state hami_g;

void hami_init_slow(void);
int hami_attach_slow(void);
/* Starts this process's watcher thread (limiter ticks, dead-slot sweep) once per process. */
void hami_watcher_start(void);
void hami_throttle(CUstream stream, uint64_t cost);
/* Graph memory (memory.c): instantiation through `call` charged with the graph pool's growth,
 * refused (CUDA_ERROR_OUT_OF_MEMORY, driver not called) when it cannot fit; re-read after the
 * first launch of such a graph and after its destruction. */
CUresult hami_graph_mem_instantiate(CUresult (*call)(void *), void *arg, CUgraphExec *e, CUgraph g,
                                    const char *api);
extern atomic_int hami_graphmem_pending; /* executable graphs with memory nodes not launched yet */
void hami_graph_mem_launched(CUgraphExec e);
/* cuGraphExecDestroy through the driver, releasing what the graph pool no longer reserves. */
CUresult hami_graph_mem_destroy(CUgraphExec e);
/* Windows in which the driver may hold memory the shim has not charged yet (pool growth, context
 * creation, array and pitch rounding, graph instantiation; never the plain alloc/free path): the
 * reconciler does not apply a reading that overlaps one (reconcile.c). */
extern _Atomic uint64_t hami_unseen_open, hami_unseen_gen;
static inline void hami_unseen_begin(void)
{
    atomic_fetch_add(&hami_unseen_open, 1);
    atomic_fetch_add(&hami_unseen_gen, 1);
}
static inline void hami_unseen_end(void)
{
    atomic_fetch_add(&hami_unseen_gen, 1);
    atomic_fetch_sub(&hami_unseen_open, 1);
}

/* Reconciliation with NVML's per-process usage into module_size (reconcile.c). Returns 1 when
 * module_size grew, -1 when it shrank, 0 otherwise; `agree`: apply only if two readings agree. */
int hami_reconcile(int pos, int agree);
/* The watcher's periodic reconciliation (devices where this process holds memory under a limit). */
void hami_reconcile_periodic(void);
/* A context is gone: release its heap/FIFO charges and re-read what its stacks held. */
void hami_limits_released(CUcontext c);
void hami_reconcile_fork_child(void);
/* Exit path: releases the own slot with reconciliation stopped (the watcher may be running). */
void hami_reconcile_detach(void);
/* pthread_atfork child handlers of the translation units with process-local state. */
void hami_memory_fork_child(void);
void hami_context_fork_child(void);

static inline void hami_init(void)
{
    if (UNLIKELY(!atomic_load_explicit(&hami_g.ready, memory_order_acquire)))
        hami_init_slow();
}

/* Attaches the region if this process (or this fork child) has not yet. 1 when attached. */
static inline int hami_attached(void)
{
    if (LIKELY(atomic_load_explicit(&hami_g.attached_pid, memory_order_acquire) == hami_g.pid))
        return 1;
    return hami_attach_slow();
}

/* Region position of a CUDA ordinal (by UUID), -1 if the device is not in the region. */
int hami_pos_of_ordinal(int ordinal);
/* Formats a CUuuid as NVML does: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. */
void hami_format_uuid(const unsigned char raw[16], char *out, size_t len);
/* Fills uuids from NVML (used when the region file is created). */
int hami_nvml_list_devices(char uuids[][HAMI_UUID_LEN], int max);
void hami_nvml_resolve(void);
/* The C library's dlsym (never our override). */
void *hami_dlsym_real(void *handle, const char *name);

/* CLOCK_*_COARSE are served by the vDSO: no system call. */
static inline uint64_t hami_coarse_realtime_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (uint64_t)ts.tv_sec;
}

static inline uint64_t hami_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
