/* The per-container shared region: HAMi's v1 file layout plus our versioned extension area.
 *
 * Layout: shim-contract.md 5.2 (v1, read by HAMi's monitor and ours) and shims/README.md (the
 * extension at HAMI_EXT_OFFSET, private to this implementation). Every offset is asserted below.
 *
 * Locking (the one documented lock of the shim): process-shared *robust* mutexes in the extension
 * area, one for slot registration/reclaim and one per device for that device's counters. They cost
 * no system call when uncontended, and the kernel releases a mutex whose owner dies at any
 * instruction (robust futex list); the next locker gets EOWNERDEAD and repairs the device's
 * counters from the slots (O(slots), only after a crash). Lock order: region lock, then device
 * locks in increasing index. Counters are atomics, so readers (the monitor) never lock.
 */
#ifndef HAMI_REGION_H
#define HAMI_REGION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define HAMI_MAX_DEVICES 16
#define HAMI_MAX_PROCS 1024
#define HAMI_UUID_LEN 96
#define HAMI_MAGIC 19920718
#define HAMI_MAJOR 1
#define HAMI_MINOR 100 /* >= 100: written by hami-core-fw, not HAMi-core (contract 5.3) */
#define HAMI_V1_SIZE 2008952u
#define HAMI_EXT_OFFSET 2011136u
#define HAMI_EXT_MAGIC 0x584d4148u /* "HAMX" */
#define HAMI_EXT_VERSION 1u

struct hami_dev_usage {
    _Atomic uint64_t context_size;
    _Atomic uint64_t module_size;
    _Atomic uint64_t data_size;
    _Atomic uint64_t offset;
    _Atomic uint64_t total;
    uint64_t unused[3];
};

struct hami_dev_util {
    _Atomic uint64_t dec_util;
    _Atomic uint64_t enc_util;
    _Atomic uint64_t sm_util;
    uint64_t unused[3];
};

struct hami_proc_slot {
    _Atomic int32_t pid;
    _Atomic int32_t hostpid;
    struct hami_dev_usage used[HAMI_MAX_DEVICES];
    _Atomic uint64_t monitorused[HAMI_MAX_DEVICES];
    struct hami_dev_util device_util[HAMI_MAX_DEVICES];
    _Atomic int32_t status;
    _Atomic uint64_t seqlock;
    uint64_t unused[2];
};

struct hami_region_v1 {
    _Atomic int32_t initialized_flag;
    uint32_t major_version;
    uint32_t minor_version;
    _Atomic int32_t sm_init_flag;
    _Atomic uint64_t owner_pid;
    unsigned char sem[32];
    uint64_t device_num;
    char uuids[HAMI_MAX_DEVICES][HAMI_UUID_LEN];
    uint64_t limit[HAMI_MAX_DEVICES];
    uint64_t sm_limit[HAMI_MAX_DEVICES];
    struct hami_proc_slot procs[HAMI_MAX_PROCS];
    _Atomic int32_t proc_num;
    _Atomic int32_t utilization_switch;
    _Atomic int32_t recent_kernel;
    int32_t priority;
    _Atomic uint64_t last_kernel_time;
    unsigned char sem_postinit[32];
};

union hami_lock {
    pthread_mutex_t m;
    unsigned char pad[64];
};

#define HAMI_DEV_LIMIT_INVALID 1u /* the creator's limit value was malformed: refuse everything */

struct hami_ext_dev {
    union hami_lock lock;
    _Atomic uint64_t reserved;       /* container-wide charged bytes (sum of slot totals) */
    _Atomic int64_t tokens;          /* compute token bucket */
    _Atomic uint64_t last_refill_ns; /* CLOCK_MONOTONIC of the last controller tick */
    _Atomic uint64_t rate_bits;      /* controller output (double, fraction of capacity) */
    _Atomic uint64_t util_x100;      /* last measured utilisation x 100 */
    _Atomic uint32_t flags;
    uint32_t pad0;
    _Atomic uint64_t util_seen_us; /* NVML timestamp of the newest utilisation sample used */
    _Atomic int64_t tokens_after;  /* bucket level right after the latest refill */
};

struct hami_ext_slot {
    _Atomic uint64_t start_time; /* /proc/<pid>/stat field 22 of the slot's process */
    uint64_t pad;
};

struct hami_ext {
    _Atomic uint32_t magic;
    uint32_t version;
    uint64_t size;
    _Atomic uint64_t last_sweep_ns; /* CLOCK_MONOTONIC of the latest dead-slot sweep (any process) */
    unsigned char pad0[40];
    union hami_lock region_lock;
    struct hami_ext_dev dev[HAMI_MAX_DEVICES];
    struct hami_ext_slot slot[HAMI_MAX_PROCS];
};

#define HAMI_FILE_SIZE (HAMI_EXT_OFFSET + sizeof(struct hami_ext))

/* Layout checks (LP64 little-endian: x86-64 and arm64). */
_Static_assert(sizeof(pthread_mutex_t) <= 64, "mutex does not fit its slot");
_Static_assert(sizeof(struct hami_dev_usage) == 64, "used[] entry");
_Static_assert(sizeof(struct hami_dev_util) == 48, "device_util[] entry");
_Static_assert(offsetof(struct hami_proc_slot, used) == 8, "slot.used");
_Static_assert(offsetof(struct hami_proc_slot, monitorused) == 1032, "slot.monitorused");
_Static_assert(offsetof(struct hami_proc_slot, device_util) == 1160, "slot.device_util");
_Static_assert(offsetof(struct hami_proc_slot, status) == 1928, "slot.status");
_Static_assert(offsetof(struct hami_proc_slot, seqlock) == 1936, "slot.seqlock");
_Static_assert(sizeof(struct hami_proc_slot) == 1960, "slot size");
_Static_assert(offsetof(struct hami_region_v1, owner_pid) == 16, "owner_pid");
_Static_assert(offsetof(struct hami_region_v1, sem) == 24, "sem");
_Static_assert(offsetof(struct hami_region_v1, device_num) == 56, "device_num");
_Static_assert(offsetof(struct hami_region_v1, uuids) == 64, "uuids");
_Static_assert(offsetof(struct hami_region_v1, limit) == 1600, "limit");
_Static_assert(offsetof(struct hami_region_v1, sm_limit) == 1728, "sm_limit");
_Static_assert(offsetof(struct hami_region_v1, procs) == 1856, "procs");
_Static_assert(offsetof(struct hami_region_v1, proc_num) == 2008896, "proc_num");
_Static_assert(offsetof(struct hami_region_v1, utilization_switch) == 2008900, "switch");
_Static_assert(offsetof(struct hami_region_v1, recent_kernel) == 2008904, "recent_kernel");
_Static_assert(offsetof(struct hami_region_v1, priority) == 2008908, "priority");
_Static_assert(offsetof(struct hami_region_v1, last_kernel_time) == 2008912, "last_kernel_time");
_Static_assert(offsetof(struct hami_region_v1, sem_postinit) == 2008920, "sem_postinit");
_Static_assert(sizeof(struct hami_region_v1) == HAMI_V1_SIZE, "v1 size");
_Static_assert(HAMI_EXT_OFFSET >= HAMI_V1_SIZE && HAMI_EXT_OFFSET % 4096 == 0, "ext offset");
_Static_assert(offsetof(struct hami_ext, last_sweep_ns) == 16, "ext.last_sweep_ns");
_Static_assert(offsetof(struct hami_ext, region_lock) == 64, "ext.region_lock");
_Static_assert(offsetof(struct hami_ext, dev) == 128, "ext.dev");
_Static_assert(sizeof(struct hami_ext_dev) == 128, "ext.dev size");
_Static_assert(offsetof(struct hami_ext_dev, reserved) == 64, "ext.dev.reserved");
_Static_assert(offsetof(struct hami_ext_dev, tokens) == 72, "ext.dev.tokens");
_Static_assert(offsetof(struct hami_ext_dev, rate_bits) == 88, "ext.dev.rate_bits");
_Static_assert(offsetof(struct hami_ext_dev, util_x100) == 96, "ext.dev.util_x100");
_Static_assert(offsetof(struct hami_ext_dev, flags) == 104, "ext.dev.flags");
_Static_assert(offsetof(struct hami_ext_dev, util_seen_us) == 112, "ext.dev.util_seen_us");
_Static_assert(offsetof(struct hami_ext_dev, tokens_after) == 120, "ext.dev.tokens_after");
_Static_assert(offsetof(struct hami_ext, slot) == 2176, "ext.slot");
_Static_assert(sizeof(struct hami_ext) == 2176 + 16 * HAMI_MAX_PROCS, "ext size");

/* ------------------------------------------------------------------ attach and slots */

enum hami_field { HAMI_F_CONTEXT = 0, HAMI_F_MODULE = 1, HAMI_F_DATA = 2 };

struct hami_shared {
    struct hami_region_v1 *v1;
    struct hami_ext *ext;
    struct hami_proc_slot *me; /* own slot, never moved */
    int slot;
    int is_private;            /* the file could not be used: process-local region */
    int attached;              /* mapping complete and a slot registered (kept in a fork child) */
    int32_t pid;               /* cached getpid() of the owner of `me` */
    uint8_t fail_closed[HAMI_MAX_DEVICES]; /* this process's own limit value was malformed */
    /* bumped by every charge and uncharge of this process (under the device lock): a reader that
     * must see charges and a driver reading from one moment (NVML reconciliation) checks it did
     * not move meanwhile */
    _Atomic uint64_t charge_gen;
    char path[512];
};

/* Lists the container's devices in limit-index order; returns the count (used only by the process
 * that creates the file). */
typedef int (*hami_list_devices_fn)(char uuids[][HAMI_UUID_LEN], int max);

/* Maps (creating if needed) the region file named by CUDA_DEVICE_MEMORY_SHARED_CACHE (or the
 * defaults of shim-contract.md 4) and registers a slot for this process. A fork child whose parent
 * had attached keeps the inherited mapping and only registers its own slot. Never exits: if the file
 * cannot be used, a process-local region with the limits from the environment is used and one
 * error line is logged. Returns 0 when a region (file or local) is attached. */
int hami_region_attach(struct hami_shared *sh, hami_list_devices_fn list_devices);

/* Charges `n` bytes of `field` on device position `pos` to this process. With `enforce`, refuses
 * (returns -1, filling *in_use and *limit) when the container's usage would exceed the limit. */
int hami_charge(struct hami_shared *sh, int pos, uint64_t n, enum hami_field field, int enforce,
                uint64_t *in_use, uint64_t *limit);
void hami_uncharge(struct hami_shared *sh, int pos, uint64_t n, enum hami_field field);
/* Sets this process's `field` on `pos` to `value` (not enforced), moving the container counter by
 * the difference; returns the previous value. */
uint64_t hami_set_field(struct hami_shared *sh, int pos, enum hami_field field, uint64_t value);

/* Releases the slots of dead processes (PID gone, zombie, or PID reused: start time differs).
 * Returns the number of slots released. */
int hami_reclaim_dead(struct hami_shared *sh);

/* The periodic sweep: at most one process of the container per `period_ns` (a CAS on the
 * extension's last_sweep_ns) runs hami_reclaim_dead, so the container-wide cost is O(slots) per
 * period however many processes call this. Returns the number of slots released. */
int hami_sweep_dead(struct hami_shared *sh, uint64_t now_ns, uint64_t period_ns);

/* Marks the own slot free (exit path) after releasing its charges. */
void hami_region_detach(struct hami_shared *sh);

static inline uint64_t hami_usage(const struct hami_shared *sh, int pos)
{
    return atomic_load_explicit(&sh->ext->dev[pos].reserved, memory_order_relaxed);
}

static inline uint64_t hami_limit(const struct hami_shared *sh, int pos)
{
    return sh->v1->limit[pos];
}

/* Position of a device UUID in uuids[], or -1. */
int hami_region_find_uuid(const struct hami_shared *sh, const char *uuid);

/* Locks a mutex of the region, repairing the counters if the previous owner died. */
int hami_lock_region(struct hami_shared *sh);
int hami_lock_dev(struct hami_shared *sh, int pos);
void hami_unlock(pthread_mutex_t *m);

/* /proc/<pid>/stat field 22 (start time in clock ticks since boot), 0 when unknown. */
uint64_t hami_proc_start_time(int pid);

#endif
