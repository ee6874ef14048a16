/* NVML wrappers: memory queries report the slice (shim-contract.md 6.5), and the NVML device list
 * used when the region file is created. NVML is loaded lazily; a missing optional entry point
 * degrades with one log line. */
#include <dlfcn.h>
#include <string.h>

#include "shim.h"

static pthread_once_t nv_once = PTHREAD_ONCE_INIT;

static const struct {
    const char *name;
    void **slot;
} nv_syms[] = {
#define NVHOOK(ret, name, params, args) {#name, (void **)&hami_real_nv.name},
#define NVUSE(ret, name, params) {#name, (void **)&hami_real_nv.name},
#include "hooks.def"
};

static void nv_resolve(void)
{
    hami_init();
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_NODELETE);
    if (!lib) {
        LOG_INFO("libnvidia-ml.so.1 not loadable: %s", dlerror());
        return;
    }
    for (size_t i = 0; i < sizeof(nv_syms) / sizeof(nv_syms[0]); i++) {
        /* the C library's dlsym: ours would hand back our own wrappers for this handle */
        *nv_syms[i].slot = hami_dlsym_real(lib, nv_syms[i].name);
        /* the per-process utilisation APIs are optional: the limiter falls back (launch.c) */
        if (!*nv_syms[i].slot && strstr(nv_syms[i].name, "Utilization"))
            LOG_INFO("libnvidia-ml.so.1 has no %s; the compute limiter uses a fallback",
                     nv_syms[i].name);
        else if (!*nv_syms[i].slot)
            LOG_WARN("libnvidia-ml.so.1 has no %s; the features using it are disabled",
                     nv_syms[i].name);
    }
}

void hami_nvml_resolve(void) { pthread_once(&nv_once, nv_resolve); }

int hami_nvml_list_devices(char uuids[][HAMI_UUID_LEN], int max)
{
    hami_nvml_resolve();
    if (!hami_real_nv.nvmlInit_v2 || !hami_real_nv.nvmlDeviceGetCount_v2 ||
        !hami_real_nv.nvmlDeviceGetHandleByIndex_v2 || !hami_real_nv.nvmlDeviceGetUUID)
        return 0;
    if (hami_real_nv.nvmlInit_v2() != NVML_SUCCESS)
        return 0;
    unsigned count = 0;
    int n = 0;
    if (hami_real_nv.nvmlDeviceGetCount_v2(&count) == NVML_SUCCESS) {
        for (unsigned i = 0; i < count && n < max; i++) {
            nvmlDevice_t d;
            if (hami_real_nv.nvmlDeviceGetHandleByIndex_v2(i, &d) == NVML_SUCCESS &&
                hami_real_nv.nvmlDeviceGetUUID(d, uuids[n], HAMI_UUID_LEN) == NVML_SUCCESS)
                n++;
        }
    }
    if (hami_real_nv.nvmlShutdown)
        hami_real_nv.nvmlShutdown();
    return n;
}

/* Region position of an NVML device, -1 when unknown or not limited. */
static int nv_pos(nvmlDevice_t dev)
{
    if (hami_g.disabled || !hami_real_nv.nvmlDeviceGetUUID || !hami_attached())
        return -1;
    char uuid[HAMI_UUID_LEN];
    if (hami_real_nv.nvmlDeviceGetUUID(dev, uuid, sizeof(uuid)) != NVML_SUCCESS)
        return -1;
    return hami_region_find_uuid(&hami_g.sh, uuid);
}

/* total = min(limit, physical); used = min(usage, total); free = total - used. */
static void nv_clamp(int pos, unsigned long long *total, unsigned long long *used,
                     unsigned long long *free_b)
{
    uint64_t limit = hami_limit(&hami_g.sh, pos);
    int invalid = hami_g.sh.fail_closed[pos] ||
                  (atomic_load(&hami_g.sh.ext->dev[pos].flags) & HAMI_DEV_LIMIT_INVALID);
    if (!limit && !invalid)
        return;
    uint64_t t = invalid ? 0 : limit < *total ? limit : *total;
    uint64_t u = hami_usage(&hami_g.sh, pos);
    if (u > t)
        u = t;
    *total = t;
    *used = u;
    *free_b = t - u;
}

HAMI_SHIM_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *m)
{
    hami_nvml_resolve();
    if (!hami_real_nv.nvmlDeviceGetMemoryInfo)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t r = hami_real_nv.nvmlDeviceGetMemoryInfo(dev, m);
    int pos;
    if (r == NVML_SUCCESS && m && (pos = nv_pos(dev)) >= 0)
        nv_clamp(pos, &m->total, &m->used, &m->free);
    return r;
}

HAMI_SHIM_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *m)
{
    hami_nvml_resolve();
    if (!hami_real_nv.nvmlDeviceGetMemoryInfo_v2)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t r = hami_real_nv.nvmlDeviceGetMemoryInfo_v2(dev, m);
    int pos;
    if (r == NVML_SUCCESS && m && (pos = nv_pos(dev)) >= 0)
        nv_clamp(pos, &m->total, &m->used, &m->free);
    return r;
}
