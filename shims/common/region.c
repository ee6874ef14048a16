/* The shared region: creation, attach, slots, charges, crash recovery (see region.h). */
#include "region.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "limits.h"
#include "log.h"

#define DEFAULT_CACHE "/tmp/cudevshr.cache"
#define MOUNTED_DIR "/usr/local/vgpu"

/* ------------------------------------------------------------------ process identity */

/* Reads state and start time of /proc/<pid>/stat: 0 ok, -1 no such process, -2 unreadable. */
static int proc_stat(int pid, char *state, uint64_t *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ESRCH ? -1 : -2;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return n == 0 ? -1 : -2;
    buf[n] = '\0';
    /* The command name may contain spaces and parentheses: fields follow the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -2;
    p += 2;
    *state = *p;
    /* field 3 is the state; the start time is field 22 */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    *start = p ? strtoull(p, NULL, 10) : 0;
    return 0;
}

uint64_t hami_proc_start_time(int pid)
{
    char st;
    uint64_t start = 0;
    return proc_stat(pid, &st, &start) == 0 ? start : 0;
}

static int proc_alive(int pid, uint64_t recorded_start)
{
    char st = '?';
    uint64_t start = 0;
    int r = proc_stat(pid, &st, &start);
    if (r == -1)
        return 0;
    if (r == -2)
        return kill(pid, 0) == 0 || errno == EPERM;
    if (st == 'Z' || st == 'X' || st == 'x')
        return 0;
    if (recorded_start && start && start != recorded_start)
        return 0; /* the PID was reused by another process */
    return 1;
}

/* ------------------------------------------------------------------ locks */

static void repair_dev(struct hami_shared *sh, int pos)
{
    int n = atomic_load(&sh->v1->proc_num);
    if (n > HAMI_MAX_PROCS)
        n = HAMI_MAX_PROCS;
    uint64_t sum = 0;
    for (int i = 0; i < n; i++)
        sum += atomic_load(&sh->v1->procs[i].used[pos].total);
    uint64_t old = atomic_exchange(&sh->ext->dev[pos].reserved, sum);
    LOG_WARN("device %d: a process died holding the accounting lock; usage recomputed from slots "
             "(%llu -> %llu bytes)", pos, (unsigned long long)old, (unsigned long long)sum);
}

static int lock_repair(struct hami_shared *sh, pthread_mutex_t *m, int pos)
{
    int e = pthread_mutex_lock(m);
    if (e == EOWNERDEAD) {
        if (pos >= 0)
            repair_dev(sh, pos);
        pthread_mutex_consistent(m);
        return 0;
    }
    if (e)
        LOG_ERROR("shared region lock unusable (%s) in %s", strerror(e), sh->path);
    return e;
}

int hami_lock_region(struct hami_shared *sh) { return lock_repair(sh, &sh->ext->region_lock.m, -1); }

int hami_lock_dev(struct hami_shared *sh, int pos)
{
    return lock_repair(sh, &sh->ext->dev[pos].lock.m, pos);
}

void hami_unlock(pthread_mutex_t *m) { pthread_mutex_unlock(m); }

static void init_lock(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
}

/* ------------------------------------------------------------------ file selection */

static void choose_path(char *out, size_t len)
{
    const char *env = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    /* Shells without the container environment: the single *.cache file of the mounted directory
     * (shim-contract.md 13, item 10). */
    const char *dir = getenv("HAMI_SHIM_MOUNTED_DIR"); /* tests point this elsewhere */
    if (!dir || !*dir)
        dir = MOUNTED_DIR;
    DIR *d = opendir(dir);
    int found = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t n = strlen(e->d_name);
            if (n > 6 && !strcmp(e->d_name + n - 6, ".cache")) {
                if (++found == 1)
                    snprintf(out, len, "%s/%s", dir, e->d_name);
            }
        }
        closedir(d);
    }
    if (found != 1)
        snprintf(out, len, "%s", DEFAULT_CACHE);
}

/* ------------------------------------------------------------------ creation */

static void init_contents(struct hami_shared *sh, hami_list_devices_fn list_devices)
{
    struct hami_region_v1 *v1 = sh->v1;
    struct hami_ext *ext = sh->ext;
    char uuids[HAMI_MAX_DEVICES][HAMI_UUID_LEN];
    memset(uuids, 0, sizeof(uuids));
    int n = list_devices ? list_devices(uuids, HAMI_MAX_DEVICES) : 0;
    if (n < 0)
        n = 0;
    v1->major_version = HAMI_MAJOR;
    v1->minor_version = HAMI_MINOR;
    v1->device_num = (uint64_t)n;
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        memcpy(v1->uuids[i], uuids[i], HAMI_UUID_LEN);
        v1->uuids[i][HAMI_UUID_LEN - 1] = '\0';
        uint64_t lim = 0, sm = 0;
        char name[96];
        int r = hami_env_bytes("CUDA_DEVICE_MEMORY_LIMIT", i, &lim, name, sizeof(name));
        if (r == HAMI_PARSE_INVALID) {
            atomic_store(&ext->dev[i].flags, HAMI_DEV_LIMIT_INVALID);
            lim = 1;
        } else if (r == HAMI_PARSE_UNSET) {
            lim = 0;
        }
        v1->limit[i] = lim;
        r = hami_env_percent("CUDA_DEVICE_SM_LIMIT", i, &sm, name, sizeof(name));
        v1->sm_limit[i] = r == HAMI_PARSE_OK ? sm : 0;
        init_lock(&ext->dev[i].lock.m);
    }
    init_lock(&ext->region_lock.m);
    const char *prio = getenv("CUDA_TASK_PRIORITY");
    v1->priority = 1;
    if (prio && *prio) {
        char *end;
        long p = strtol(prio, &end, 10);
        if (*end == '\0')
            v1->priority = (int32_t)p;
        else
            LOG_ERROR("CUDA_TASK_PRIORITY=%s is not a decimal integer; using 1", prio);
    }
    atomic_store(&v1->utilization_switch, 1);
    atomic_store(&v1->recent_kernel, 2);
    atomic_store(&v1->proc_num, 0);
    ext->version = HAMI_EXT_VERSION;
    ext->size = sizeof(struct hami_ext);
    atomic_store_explicit(&ext->magic, HAMI_EXT_MAGIC, memory_order_release);
    atomic_store_explicit(&v1->initialized_flag, HAMI_MAGIC, memory_order_release);
}

/* Checks this process's own limit variables against the file (the file's values apply). */
static void check_env_limits(struct hami_shared *sh)
{
    char reported[96] = "";
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        uint64_t lim = 0, sm = 0;
        char name[96];
        int r = hami_env_bytes("CUDA_DEVICE_MEMORY_LIMIT", i, &lim, name, sizeof(name));
        if (r == HAMI_PARSE_INVALID) {
            sh->fail_closed[i] = 1;
            if (i < (int)sh->v1->device_num && strcmp(reported, name)) {
                LOG_ERROR("%s=%s is not a valid size (decimal digits with an optional k/m/g/t or "
                          "Ki/Mi/Gi/Ti suffix); every allocation on the device(s) it applies to is "
                          "refused", name, getenv(name));
                snprintf(reported, sizeof(reported), "%s", name);
            }
        } else if (r == HAMI_PARSE_OK && i < (int)sh->v1->device_num && lim != sh->v1->limit[i]) {
            LOG_WARN("limit inconsistency for device %d: %s=%llu bytes, shared region %s has %llu; "
                     "the region's value applies", i, name, (unsigned long long)lim, sh->path,
                     (unsigned long long)sh->v1->limit[i]);
        }
        r = hami_env_percent("CUDA_DEVICE_SM_LIMIT", i, &sm, name, sizeof(name));
        if (r == HAMI_PARSE_INVALID && i == 0)
            LOG_ERROR("%s=%s is not a percentage 0-100; no compute limit applies", name, getenv(name));
    }
}

static int map_private(struct hami_shared *sh, hami_list_devices_fn list_devices)
{
    void *p = mmap(NULL, HAMI_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    sh->v1 = p;
    sh->ext = (struct hami_ext *)((char *)p + HAMI_EXT_OFFSET);
    sh->is_private = 1;
    init_contents(sh, list_devices);
    return 0;
}

static int map_file(struct hami_shared *sh, hami_list_devices_fn list_devices)
{
    int created = 1;
    int fd = open(sh->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno == EEXIST) {
        created = 0;
        fd = open(sh->path, O_RDWR | O_CLOEXEC);
    }
    if (fd < 0) {
        LOG_ERROR("cannot open shared region %s: %s; limits apply to this process only", sh->path,
                  strerror(errno));
        return -1;
    }
    /* Processes of one container may run as different users: make the file writable for all
     * without touching the process umask (shim-contract.md 9). */
    if (created)
        (void)fchmod(fd, 0666);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLKW, &fl) != 0) {
        LOG_ERROR("cannot lock shared region %s: %s", sh->path, strerror(errno));
        close(fd);
        return -1;
    }
    int rc = -1;
    struct stat st;
    if (fstat(fd, &st) != 0)
        goto out;
    if ((uint64_t)st.st_size < HAMI_FILE_SIZE) {
        if (st.st_size >= (off_t)sizeof(int32_t)) {
            int32_t magic = 0;
            if (pread(fd, &magic, sizeof(magic), 0) == (ssize_t)sizeof(magic) && magic == HAMI_MAGIC) {
                LOG_ERROR("shared region %s was written by another implementation (HAMi-core?); "
                          "limits apply to this process only", sh->path);
                goto out;
            }
        }
        if (ftruncate(fd, (off_t)HAMI_FILE_SIZE) != 0) {
            LOG_ERROR("cannot size shared region %s: %s", sh->path, strerror(errno));
            goto out;
        }
    }
    void *p = mmap(NULL, HAMI_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        LOG_ERROR("cannot map shared region %s: %s", sh->path, strerror(errno));
        goto out;
    }
    sh->v1 = p;
    sh->ext = (struct hami_ext *)((char *)p + HAMI_EXT_OFFSET);
    if (atomic_load_explicit(&sh->v1->initialized_flag, memory_order_acquire) != HAMI_MAGIC) {
        init_contents(sh, list_devices);
    } else if (sh->v1->major_version != HAMI_MAJOR || sh->v1->minor_version < HAMI_MINOR ||
               atomic_load(&sh->ext->magic) != HAMI_EXT_MAGIC || sh->ext->version != HAMI_EXT_VERSION) {
        LOG_ERROR("shared region %s has version %u.%u (extension %#x v%u), not ours; limits apply to "
                  "this process only", sh->path, sh->v1->major_version, sh->v1->minor_version,
                  atomic_load(&sh->ext->magic), sh->ext->version);
        munmap(p, HAMI_FILE_SIZE);
        sh->v1 = NULL;
        sh->ext = NULL;
        goto out;
    }
    rc = 0;
out:
    fl.l_type = F_UNLCK;
    (void)fcntl(fd, F_OFD_SETLK, &fl);
    close(fd);
    return rc;
}

/* ------------------------------------------------------------------ slots */

static void release_slot(struct hami_shared *sh, int i)
{
    struct hami_proc_slot *s = &sh->v1->procs[i];
    for (int d = 0; d < HAMI_MAX_DEVICES; d++) {
        if (hami_lock_dev(sh, d) != 0)
            continue;
        uint64_t total = atomic_load(&s->used[d].total);
        uint64_t cur = atomic_load(&sh->ext->dev[d].reserved);
        atomic_store(&sh->ext->dev[d].reserved, cur >= total ? cur - total : 0);
        atomic_store(&s->used[d].context_size, 0);
        atomic_store(&s->used[d].module_size, 0);
        atomic_store(&s->used[d].data_size, 0);
        atomic_store(&s->used[d].total, 0);
        hami_unlock(&sh->ext->dev[d].lock.m);
    }
    atomic_store(&s->status, 0);
    atomic_store(&s->hostpid, 0);
    for (int d = 0; d < HAMI_MAX_DEVICES; d++) {
        atomic_store(&s->device_util[d].sm_util, 0);
        atomic_store(&s->monitorused[d], 0);
    }
    atomic_store(&sh->ext->slot[i].start_time, 0);
    atomic_store(&s->pid, 0);
}

static int reclaim_locked(struct hami_shared *sh)
{
    int n = atomic_load(&sh->v1->proc_num), released = 0;
    if (n > HAMI_MAX_PROCS)
        n = HAMI_MAX_PROCS;
    for (int i = 0; i < n; i++) {
        int pid = atomic_load(&sh->v1->procs[i].pid);
        if (pid == 0 || i == sh->slot)
            continue;
        if (proc_alive(pid, atomic_load(&sh->ext->slot[i].start_time)))
            continue;
        LOG_INFO("releasing slot %d of dead process %d", i, pid);
        release_slot(sh, i);
        released++;
    }
    return released;
}

int hami_reclaim_dead(struct hami_shared *sh)
{
    if (!sh->v1 || hami_lock_region(sh) != 0)
        return 0;
    int r = reclaim_locked(sh);
    hami_unlock(&sh->ext->region_lock.m);
    return r;
}

int hami_sweep_dead(struct hami_shared *sh, uint64_t now_ns, uint64_t period_ns)
{
    if (!sh->v1 || sh->is_private)
        return 0;
    _Atomic uint64_t *last_p = &sh->ext->last_sweep_ns;
    uint64_t last = atomic_load_explicit(last_p, memory_order_relaxed);
    if ((now_ns >= last && now_ns - last < period_ns) ||
        !atomic_compare_exchange_strong(last_p, &last, now_ns))
        return 0; /* swept recently, or another process of the container sweeps now */
    return hami_reclaim_dead(sh);
}

static int register_slot(struct hami_shared *sh)
{
    if (hami_lock_region(sh) != 0)
        return -1;
    reclaim_locked(sh);
    int n = atomic_load(&sh->v1->proc_num), slot = -1;
    for (int i = 0; i < n && i < HAMI_MAX_PROCS; i++)
        if (atomic_load(&sh->v1->procs[i].pid) == 0) {
            slot = i;
            break;
        }
    if (slot < 0 && n < HAMI_MAX_PROCS) {
        slot = n;
        atomic_store(&sh->v1->proc_num, n + 1);
    }
    if (slot >= 0) {
        struct hami_proc_slot *s = &sh->v1->procs[slot];
        atomic_store(&s->pid, sh->pid);
        atomic_store(&sh->ext->slot[slot].start_time, hami_proc_start_time(sh->pid));
        atomic_store(&s->hostpid, 0);
        atomic_store(&s->status, 1);
        sh->slot = slot;
        sh->me = s;
    }
    hami_unlock(&sh->ext->region_lock.m);
    if (slot < 0) {
        LOG_ERROR("shared region %s has no free process slot (%d in use)", sh->path, HAMI_MAX_PROCS);
        return -1;
    }
    return 0;
}

int hami_region_attach(struct hami_shared *sh, hami_list_devices_fn list_devices)
{
    sh->slot = -1;
    sh->me = NULL;
    sh->pid = (int32_t)getpid();
    if (!(sh->attached && sh->v1)) { /* not a fork child of an attached process */
        sh->attached = 0;
        choose_path(sh->path, sizeof(sh->path));
        if (map_file(sh, list_devices) != 0 && map_private(sh, list_devices) != 0) {
            LOG_ERROR("cannot create a local accounting region; limits are not enforced");
            return -1;
        }
        check_env_limits(sh);
    }
    if (register_slot(sh) != 0) {
        /* No slot: account in a process-local region so that limits still hold per process. */
        if (sh->is_private || map_private(sh, list_devices) != 0 || register_slot(sh) != 0)
            return -1;
    }
    sh->attached = 1;
    LOG_INFO("attached %s region %s, slot %d, %llu device(s)", sh->is_private ? "local" : "shared",
             sh->path, sh->slot, (unsigned long long)sh->v1->device_num);
    return 0;
}

void hami_region_detach(struct hami_shared *sh)
{
    if (!sh->v1 || sh->slot < 0 || sh->pid != (int32_t)getpid())
        return;
    if (hami_lock_region(sh) != 0)
        return;
    release_slot(sh, sh->slot);
    sh->slot = -1; /* under the lock: the sweeping thread reads it */
    sh->me = NULL;
    hami_unlock(&sh->ext->region_lock.m);
}

int hami_region_find_uuid(const struct hami_shared *sh, const char *uuid)
{
    int n = (int)sh->v1->device_num;
    for (int i = 0; i < n && i < HAMI_MAX_DEVICES; i++)
        if (!strncasecmp(sh->v1->uuids[i], uuid, HAMI_UUID_LEN))
            return i;
    return -1;
}

/* ------------------------------------------------------------------ charges */

static _Atomic uint64_t *field_ptr(struct hami_proc_slot *s, int pos, enum hami_field f)
{
    switch (f) {
    case HAMI_F_CONTEXT: return &s->used[pos].context_size;
    case HAMI_F_MODULE: return &s->used[pos].module_size;
    default: return &s->used[pos].data_size;
    }
}

int hami_charge(struct hami_shared *sh, int pos, uint64_t n, enum hami_field field, int enforce,
                uint64_t *in_use, uint64_t *limit)
{
    struct hami_ext_dev *ed = &sh->ext->dev[pos];
    uint64_t lim = sh->v1->limit[pos];
    *limit = lim;
    if (enforce && (sh->fail_closed[pos] || (atomic_load(&ed->flags) & HAMI_DEV_LIMIT_INVALID))) {
        *in_use = atomic_load(&ed->reserved);
        *limit = 0;
        return -1;
    }
    if (hami_lock_dev(sh, pos) != 0) {
        *in_use = atomic_load(&ed->reserved);
        return -1;
    }
    uint64_t cur = atomic_load_explicit(&ed->reserved, memory_order_relaxed);
    if (enforce && lim && (n > lim || cur > lim - n)) {
        hami_unlock(&ed->lock.m);
        *in_use = cur;
        return -1;
    }
    /* Container counter first, then the slot: a crash in between is repaired from the slots. */
    atomic_store_explicit(&ed->reserved, cur + n, memory_order_relaxed);
    struct hami_proc_slot *s = sh->me;
    atomic_fetch_add_explicit(field_ptr(s, pos, field), n, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->used[pos].total, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&sh->charge_gen, 1, memory_order_relaxed);
    hami_unlock(&ed->lock.m);
    return 0;
}

void hami_uncharge(struct hami_shared *sh, int pos, uint64_t n, enum hami_field field)
{
    struct hami_ext_dev *ed = &sh->ext->dev[pos];
    if (hami_lock_dev(sh, pos) != 0)
        return;
    struct hami_proc_slot *s = sh->me;
    uint64_t cur = atomic_load_explicit(&ed->reserved, memory_order_relaxed);
    atomic_store_explicit(&ed->reserved, cur >= n ? cur - n : 0, memory_order_relaxed);
    _Atomic uint64_t *f = field_ptr(s, pos, field);
    uint64_t fv = atomic_load_explicit(f, memory_order_relaxed);
    atomic_store_explicit(f, fv >= n ? fv - n : 0, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&s->used[pos].total, memory_order_relaxed);
    atomic_store_explicit(&s->used[pos].total, t >= n ? t - n : 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&sh->charge_gen, 1, memory_order_relaxed);
    hami_unlock(&ed->lock.m);
}

uint64_t hami_set_field(struct hami_shared *sh, int pos, enum hami_field field, uint64_t value)
{
    struct hami_ext_dev *ed = &sh->ext->dev[pos];
    if (hami_lock_dev(sh, pos) != 0)
        return value;
    struct hami_proc_slot *s = sh->me;
    _Atomic uint64_t *f = field_ptr(s, pos, field);
    uint64_t old = atomic_load_explicit(f, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&ed->reserved, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&s->used[pos].total, memory_order_relaxed);
    if (value >= old) {
        atomic_store_explicit(&ed->reserved, cur + (value - old), memory_order_relaxed);
        atomic_store_explicit(&s->used[pos].total, t + (value - old), memory_order_relaxed);
    } else {
        uint64_t d = old - value;
        atomic_store_explicit(&ed->reserved, cur >= d ? cur - d : 0, memory_order_relaxed);
        atomic_store_explicit(&s->used[pos].total, t >= d ? t - d : 0, memory_order_relaxed);
    }
    atomic_store_explicit(f, value, memory_order_relaxed);
    atomic_fetch_add_explicit(&sh->charge_gen, 1, memory_order_relaxed);
    hami_unlock(&ed->lock.m);
    return old;
}
