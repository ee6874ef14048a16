/* Initialisation, resolution of the real entry points, the dlsym override and cuGetProcAddress.
 *
 * Init: the constructor only reads the environment and finds the real dlsym (no file, no driver:
 * a shell that never touches CUDA is unaffected). Wrappers resolve the driver on first use
 * (pthread_once); the region is attached after a successful cuInit, or lazily by the first call
 * that needs it once the driver is initialised.
 */
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "limits.h"
#include "shim.h"

struct real_cuda hami_real;
struct real_nvml hami_real_nv;
struct hami_state hami_g;

/* Read by the dlsym trampoline: the real dlsym, reached with the caller's return address intact. */
__attribute__((visibility("hidden"))) void *hami_real_dlsym_next;
static void *(*real_dlsym)(void *, const char *);

static pthread_once_t early_once = PTHREAD_ONCE_INIT;
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t attach_mu = PTHREAD_MUTEX_INITIALIZER;
static void *libcuda;

/* ------------------------------------------------------------------ name tables */

struct hook_desc {
    const char *name;
    void **real;   /* slot in hami_real / hami_real_nv */
    void *wrapper; /* our exported wrapper, NULL for helpers */
    int nvml;
};

#define HOOK(ret, name, params, args) ret name params;
#define NVHOOK(ret, name, params, args) ret name params;
#include "hooks.def"

static const struct hook_desc hooks[] = {
#define HOOK(ret, name, params, args) {#name, (void **)&hami_real.name, (void *)name, 0},
#define USE(ret, name, params) {#name, (void **)&hami_real.name, NULL, 0},
#define NVHOOK(ret, name, params, args) {#name, (void **)&hami_real_nv.name, (void *)name, 1},
#define NVUSE(ret, name, params) {#name, (void **)&hami_real_nv.name, NULL, 1},
#include "hooks.def"
};
#define NHOOKS (sizeof(hooks) / sizeof(hooks[0]))

static const struct hook_desc *find_hook(const char *name)
{
    for (size_t i = 0; i < NHOOKS; i++)
        if (hooks[i].wrapper && !strcmp(hooks[i].name, name))
            return &hooks[i];
    return NULL;
}

/* ------------------------------------------------------------------ early init */

/* fork child (shim-contract.md 2.7): the child is a new process of the container. Its first call
 * that needs the region registers a new slot (reusing the parent's mapping), so its charges never
 * land in the parent's slot, and restarts the watcher thread (threads do not survive fork). Every
 * process-local lock another thread of the parent may have held at the fork is re-initialised
 * here; the locks in the file belong to the parent's threads, which release them in the parent. */
static void on_fork_child(void)
{
    pthread_mutex_init(&attach_mu, NULL);
    hami_g.pid = (int32_t)getpid();
    hami_g.sh.slot = -1;
    hami_g.sh.me = NULL;
    hami_memory_fork_child();
    hami_context_fork_child();
    hami_reconcile_fork_child();
}

static void find_real_dlsym(void)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]) && !real_dlsym; i++)
        real_dlsym = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (!real_dlsym)
        LOG_ERROR("cannot find the C library's dlsym: %s", dlerror());
    __atomic_store_n(&hami_real_dlsym_next, (void *)real_dlsym, __ATOMIC_RELEASE);
}

static void early_init(void)
{
    hami_log_init();
    hami_g.disabled = hami_env_true("CUDA_DISABLE_CONTROL");
    hami_g.pid = (int32_t)getpid();
    hami_g.sh.slot = -1;
    const char *pol = getenv("GPU_CORE_UTILIZATION_POLICY");
    hami_g.policy = !pol ? HAMI_POLICY_DEFAULT
                    : !strcasecmp(pol, "force") ? HAMI_POLICY_FORCE
                    : !strcasecmp(pol, "disable") ? HAMI_POLICY_DISABLE
                    : HAMI_POLICY_DEFAULT;
    const char *iv = getenv("RECORD_KERNEL_INTERVAL");
    hami_g.record_interval_s = iv && atoi(iv) >= 1 ? atoi(iv) : 1;
    find_real_dlsym();
    pthread_atfork(NULL, NULL, on_fork_child);
    if (hami_g.disabled)
        LOG_INFO("CUDA_DISABLE_CONTROL is set: every call passes through");
}

/* Set once the constructor has run: from then on dlsym may run the (instrumented) shim code. */
__attribute__((visibility("hidden"))) int hami_ctor_done;

__attribute__((constructor)) static void shim_ctor(void)
{
    pthread_once(&early_once, early_init);
    __atomic_store_n(&hami_ctor_done, 1, __ATOMIC_RELEASE);
}

__attribute__((destructor)) static void shim_dtor(void)
{
    if (atomic_load(&hami_g.attached_pid) == hami_g.pid && hami_g.pid == (int32_t)getpid())
        hami_reconcile_detach();
}

/* ------------------------------------------------------------------ resolution */

static void resolve(void)
{
    pthread_once(&early_once, early_init);
    libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NODELETE);
    if (!libcuda) {
        LOG_ERROR("cannot load libcuda.so.1: %s; CUDA calls pass through", dlerror());
    } else if (real_dlsym) {
        for (size_t i = 0; i < NHOOKS; i++) {
            if (hooks[i].nvml)
                continue;
            void *p = real_dlsym(libcuda, hooks[i].name);
            if (p && p == hooks[i].wrapper)
                p = NULL; /* our own wrapper is not the driver's function */
            *hooks[i].real = p;
        }
        if (!hami_real.cuInit || !hami_real.cuCtxGetDevice ||
            (!hami_real.cuDeviceGetUuid_v2 && !hami_real.cuDeviceGetUuid)) {
            LOG_ERROR("libcuda.so.1 lacks a mandatory entry point (cuInit, cuCtxGetDevice, "
                      "cuDeviceGetUuid): %s; limits are not enforced", dlerror());
            hami_g.disabled = 1;
        }
    }
    atomic_store_explicit(&hami_g.ready, 1, memory_order_release);
}

void hami_init_slow(void) { pthread_once(&resolve_once, resolve); }

void hami_format_uuid(const unsigned char r[16], char *out, size_t len)
{
    snprintf(out, len,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
}

static CUresult ordinal_uuid(int ordinal, char *out, size_t len)
{
    CUuuid u;
    CUresult r = hami_real.cuDeviceGetUuid_v2 ? hami_real.cuDeviceGetUuid_v2(&u, ordinal)
                                              : hami_real.cuDeviceGetUuid(&u, ordinal);
    if (r == CUDA_SUCCESS)
        hami_format_uuid((const unsigned char *)u.bytes, out, len);
    return r;
}

/* The container's devices in limit-index order (shim-contract.md 7.2): UUIDs listed in
 * NVIDIA_VISIBLE_DEVICES, else NVML order, else CUDA order. */
static int list_devices(char uuids[][HAMI_UUID_LEN], int max)
{
    int n = 0;
    const char *nvd = getenv("NVIDIA_VISIBLE_DEVICES");
    if (nvd && strstr(nvd, "GPU-")) {
        char buf[2048];
        snprintf(buf, sizeof(buf), "%s", nvd);
        char *save = NULL;
        for (char *t = strtok_r(buf, ",", &save); t && n < max; t = strtok_r(NULL, ",", &save))
            if (!strncmp(t, "GPU-", 4))
                snprintf(uuids[n++], HAMI_UUID_LEN, "%s", t);
        if (n)
            return n;
    }
    n = hami_nvml_list_devices(uuids, max);
    if (n > 0)
        return n;
    int count = 0;
    if (hami_real.cuDeviceGetCount && hami_real.cuDeviceGetCount(&count) == CUDA_SUCCESS)
        for (int i = 0; i < count && n < max; i++)
            if (ordinal_uuid(i, uuids[n], HAMI_UUID_LEN) == CUDA_SUCCESS)
                n++;
    return n;
}

static _Atomic int pos_cache[64]; /* position + 2; 0 = not looked up yet */

int hami_pos_of_ordinal(int ordinal)
{
    if (ordinal < 0 || ordinal >= 64)
        return -1;
    int v = atomic_load_explicit(&pos_cache[ordinal], memory_order_relaxed);
    if (LIKELY(v))
        return v - 2;
    char uuid[HAMI_UUID_LEN];
    if (ordinal_uuid(ordinal, uuid, sizeof(uuid)) != CUDA_SUCCESS)
        return -1;
    int pos = hami_region_find_uuid(&hami_g.sh, uuid);
    if (pos < 0)
        LOG_WARN("device %s (CUDA ordinal %d) is not in the shared region; it is not limited", uuid,
                 ordinal);
    atomic_store(&pos_cache[ordinal], pos + 2);
    return pos;
}

int hami_attach_slow(void)
{
    hami_init();
    if (hami_g.disabled)
        return 0;
    pthread_mutex_lock(&attach_mu);
    int ok = atomic_load(&hami_g.attached_pid) == hami_g.pid;
    if (!ok && hami_region_attach(&hami_g.sh, list_devices) == 0) {
        atomic_store_explicit(&hami_g.v1, hami_g.sh.v1, memory_order_release);
        int any = 0;
        for (int i = 0; i < (int)hami_g.sh.v1->device_num && i < HAMI_MAX_DEVICES; i++) {
            uint64_t sm = hami_g.sh.v1->sm_limit[i];
            if (sm > 0 && sm < 100)
                any = 1;
        }
        atomic_store(&hami_g.limiter_any, any && hami_g.policy != HAMI_POLICY_DISABLE);
        atomic_store_explicit(&hami_g.attached_pid, hami_g.pid, memory_order_release);
        ok = 1;
    }
    pthread_mutex_unlock(&attach_mu);
    if (ok)
        hami_watcher_start();
    return ok;
}

/* ------------------------------------------------------------------ cuInit */

HAMI_SHIM_API CUresult cuInit(unsigned int flags)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuInit))
        return CUDA_ERROR_NO_DEVICE;
    CUresult r = hami_real.cuInit(flags);
    if (r == CUDA_SUCCESS && !hami_g.disabled)
        hami_attached();
    return r;
}

/* ------------------------------------------------------------------ cuGetProcAddress */

/* Substitutes our wrapper only when the driver returned the real address of an entry we wrap, so
 * the requested version and per-thread flags select exactly the driver's variant. */
static void *substitute(void *p)
{
    for (size_t i = 0; i < NHOOKS; i++)
        if (hooks[i].wrapper && !hooks[i].nvml && *hooks[i].real == p)
            return hooks[i].wrapper;
    return p;
}

HAMI_SHIM_API CUresult cuGetProcAddress(const char *symbol, void **pfn, int ver, cuuint64_t flags)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuGetProcAddress))
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult r = hami_real.cuGetProcAddress(symbol, pfn, ver, flags);
    if (r == CUDA_SUCCESS && pfn && *pfn && !hami_g.disabled)
        *pfn = substitute(*pfn);
    return r;
}

HAMI_SHIM_API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int ver,
                                           cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    hami_init();
    if (UNLIKELY(!hami_real.cuGetProcAddress_v2))
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult r = hami_real.cuGetProcAddress_v2(symbol, pfn, ver, flags, status);
    if (r == CUDA_SUCCESS && pfn && *pfn && !hami_g.disabled)
        *pfn = substitute(*pfn);
    return r;
}

/* ------------------------------------------------------------------ dlsym */

void *hami_dlsym_real(void *handle, const char *name)
{
    pthread_once(&early_once, early_init);
    return real_dlsym ? real_dlsym(handle, name) : NULL;
}

static void *driver_handles[4];
static atomic_int n_driver_handles;

static int is_driver_handle(void *handle)
{
    int n = atomic_load(&n_driver_handles);
    for (int i = 0; i < n; i++)
        if (driver_handles[i] == handle)
            return 1;
    struct link_map *lm = NULL;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || !lm || !lm->l_name)
        return 0;
    const char *base = strrchr(lm->l_name, '/');
    base = base ? base + 1 : lm->l_name;
    if (strncmp(base, "libcuda.so", 10) && strncmp(base, "libnvidia-ml.so", 15))
        return 0;
    if (n < 4) {
        driver_handles[n] = handle;
        atomic_store(&n_driver_handles, n + 1);
    }
    return 1;
}

/* Lookups through a handle of the driver or NVML get our wrapper for hooked names (the CUDA runtime
 * opens libcuda.so.1 itself; symbol interposition does not apply to handle lookups). Everything
 * else, including RTLD_DEFAULT (our exported wrappers are found by the normal search order), goes
 * to the C library unchanged. RTLD_NEXT never reaches here once initialised: the trampoline jumps
 * straight to the real dlsym so "next" is relative to the caller. */
__attribute__((visibility("hidden"))) void *hami_dlsym_impl(void *handle, const char *name)
{
    pthread_once(&early_once, early_init);
    if (!real_dlsym)
        return NULL;
    if (handle != RTLD_DEFAULT && handle != RTLD_NEXT && name && !hami_g.disabled) {
        const struct hook_desc *h = find_hook(name);
        if (h && is_driver_handle(handle)) {
            if (!h->nvml)
                hami_init();
            return h->wrapper;
        }
    }
    return real_dlsym(handle, name);
}

/* Before the constructor ran (a sanitizer runtime or another library's constructor looking symbols
 * up), nothing of the shim may run that needs its own initialisation (sanitizer shadow memory
 * included): resolve the C library's dlsym and forward, uninstrumented. */
#if defined(__clang__) || defined(__GNUC__)
#define HAMI_NO_SANITIZE __attribute__((no_sanitize("address", "thread", "undefined")))
#else
#define HAMI_NO_SANITIZE
#endif
__attribute__((visibility("hidden"))) HAMI_NO_SANITIZE void *hami_dlsym_cold(void *handle,
                                                                             const char *name)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    void *p = __atomic_load_n(&hami_real_dlsym_next, __ATOMIC_ACQUIRE);
    for (size_t i = 0; !p && i < sizeof(versions) / sizeof(versions[0]); i++)
        p = dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (!p)
        return NULL;
    __atomic_store_n(&hami_real_dlsym_next, p, __ATOMIC_RELEASE);
    return ((void *(*)(void *, const char *))p)(handle, name);
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, @function\n"
        "dlsym:\n"
        "    movq hami_real_dlsym_next(%rip), %rax\n"
        "    testq %rax, %rax\n"
        "    je 2f\n"
        "    cmpq $-1, %rdi\n"
        "    jne 1f\n"
        "    jmp *%rax\n"
        "1:  movl hami_ctor_done(%rip), %eax\n"
        "    testl %eax, %eax\n"
        "    je 2f\n"
        "    jmp hami_dlsym_impl\n"
        "2:  jmp hami_dlsym_cold\n"
        ".size dlsym, .-dlsym\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, %function\n"
        "dlsym:\n"
        "    adrp x16, hami_real_dlsym_next\n"
        "    ldr x16, [x16, :lo12:hami_real_dlsym_next]\n"
        "    cbz x16, 2f\n"
        "    cmn x0, #1\n"
        "    b.ne 1f\n"
        "    br x16\n"
        "1:  adrp x17, hami_ctor_done\n"
        "    ldr w17, [x17, :lo12:hami_ctor_done]\n"
        "    cbz w17, 2f\n"
        "    b hami_dlsym_impl\n"
        "2:  b hami_dlsym_cold\n"
        ".size dlsym, .-dlsym\n");
#else
/* Other architectures: RTLD_NEXT is resolved relative to the shim (documented limitation). */
HAMI_SHIM_API void *dlsym(void *handle, const char *name) { return hami_dlsym_impl(handle, name); }
#endif
