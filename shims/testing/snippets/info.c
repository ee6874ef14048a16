/* Capacity as the application sees it: `info <ordinal> <alloc_bytes>`.
 * Allocates <alloc_bytes> on CUDA <ordinal>, then prints every capacity query (CUDA v2 and v1
 * ABIs, NVML v1 and v2 for the same device by UUID). `info <ordinal> <bytes> <free_mib>` first
 * makes the stand-in driver report <free_mib> MiB free. */
#include <nvml.h>

#include "snippet.h"

int main(int argc, char **argv)
{
    int ord = argc > 1 ? atoi(argv[1]) : 0;
    uint64_t bytes = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
    setup(ord);
    if (argc > 3)
        ((fakegpu_set_free_mib_fn)(uintptr_t)fake_fn("fakegpu_set_free_mib"))(ord, strtoull(argv[3], NULL, 10));
    CUdeviceptr p = 0;
    if (bytes)
        say("alloc_rc", cuMemAlloc_v2(&p, bytes));
    size_t f = 0, t = 0;
    say("getinfo_rc", cuMemGetInfo_v2(&f, &t));
    say("free", (long long)f);
    say("total", (long long)t);
    unsigned f32 = 0, t32 = 0;
    say("getinfo_v1_rc", cuMemGetInfo(&f32, &t32));
    say("free_v1", f32);
    say("total_v1", t32);
    size_t tm = 0;
    say("totalmem_rc", cuDeviceTotalMem_v2(&tm, ord));
    say("totalmem", (long long)tm);
    unsigned tm32 = 0;
    say("totalmem_v1_rc", cuDeviceTotalMem(&tm32, ord));
    say("totalmem_v1", tm32);
    CUuuid u;
    MUST(cuDeviceGetUuid_v2(&u, ord));
    char uuid[96];
    const unsigned char *r = (const unsigned char *)u.bytes;
    snprintf(uuid, sizeof(uuid), "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
    printf("uuid=%s\n", uuid);
    if (nvmlInit_v2() != NVML_SUCCESS)
        DIE("nvmlInit_v2");
    nvmlDevice_t h;
    if (nvmlDeviceGetHandleByUUID(uuid, &h) != NVML_SUCCESS)
        DIE("nvmlDeviceGetHandleByUUID");
    nvmlMemory_t m;
    say("nvml_rc", nvmlDeviceGetMemoryInfo(h, &m));
    say("nvml_total", (long long)m.total);
    say("nvml_used", (long long)m.used);
    say("nvml_free", (long long)m.free);
    nvmlMemory_v2_t m2;
    memset(&m2, 0, sizeof(m2));
    m2.version = nvmlMemory_v2;
    say("nvml2_rc", nvmlDeviceGetMemoryInfo_v2(h, &m2));
    say("nvml2_total", (long long)m2.total);
    say("nvml2_used", (long long)m2.used);
    say("nvml2_free", (long long)m2.free);
    nvmlShutdown();
    if (p)
        say("free_rc", cuMemFree_v2(p));
    return 0;
}
