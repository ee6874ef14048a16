/* Context overhead accounting: `contexts <alloc_bytes>`.
 *
 * Retains the primary context of CUDA ordinal 0 (hold "primary"), allocates <alloc_bytes> in it,
 * creates one context with each of cuCtxCreate, _v2, _v3, _v4 (on ordinals 0, 1, 0, 1) and tries
 * an allocation of <alloc_bytes> in the last one (hold "created"), frees, destroys them (hold
 * "destroyed"), releases the primary context (hold "released"). At each hold it prints the stand-in
 * driver's used bytes per ordinal (driver_used_<d>) and cuMemGetInfo_v2 of the primary context.
 */
#include "snippet.h"

static CUcontext primary;

static void report(const char *tag)
{
    for (int d = 0; d < 2; d++) {
        char key[32];
        snprintf(key, sizeof(key), "%s.driver_used_%d", tag, d);
        say(key, (long long)fake_used(d));
    }
    size_t f = 0, t = 0;
    if (primary) {
        MUST(cuCtxPushCurrent_v2(primary));
        char key[32];
        snprintf(key, sizeof(key), "%s.getinfo_rc", tag);
        say(key, cuMemGetInfo_v2(&f, &t));
        snprintf(key, sizeof(key), "%s.free", tag);
        say(key, (long long)f);
        snprintf(key, sizeof(key), "%s.total", tag);
        say(key, (long long)t);
        CUcontext popped;
        MUST(cuCtxPopCurrent_v2(&popped));
    }
    hold(tag);
}

int main(int argc, char **argv)
{
    uint64_t size = argc > 1 ? strtoull(argv[1], NULL, 10) : MIB;
    MUST(cuInit(0));
    CUdevice d0, d1;
    MUST(cuDeviceGet(&d0, 0));
    MUST(cuDeviceGet(&d1, 1));
    MUST(cuDevicePrimaryCtxRetain(&primary, d0));
    CUcontext again;
    MUST(cuDevicePrimaryCtxRetain(&again, d0)); /* a second retain: no second charge */
    report("primary");

    MUST(cuCtxSetCurrent(primary));
    CUdeviceptr p;
    say("alloc_rc", cuMemAlloc_v2(&p, size));
    CUcontext c[4];
    MUST(cuCtxCreate(&c[0], 0, d0));
    MUST(cuCtxCreate_v2(&c[1], 0, d1));
    MUST(cuCtxCreate_v3(&c[2], NULL, 0, 0, d0));
    MUST(cuCtxCreate_v4(&c[3], NULL, 0, d1));
    CUdeviceptr q = 0;
    say("alloc_in_created_rc", cuMemAlloc_v2(&q, size)); /* current: c[3] on ordinal 1 */
    report("created");

    if (q)
        say("free_q_rc", cuMemFree_v2(q));
    MUST(cuCtxDestroy(c[0]));
    for (int i = 3; i >= 1; i--)
        MUST(cuCtxDestroy_v2(c[i]));
    MUST(cuCtxSetCurrent(primary));
    say("free_rc", cuMemFree_v2(p));
    report("destroyed");

    MUST(cuDevicePrimaryCtxRelease_v2(d0));
    MUST(cuDevicePrimaryCtxRelease_v2(d0));
    primary = NULL;
    report("released");
    return 0;
}
