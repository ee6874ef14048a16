/* Helpers shared by the test programs. Each program prints one `key=value` line per check. */
#ifndef HAMI_SNIPPET_H
#define HAMI_SNIPPET_H

#include <cuda.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakegpu.h"

#define MIB (1ull << 20)

#define DIE(...)                                   \
    do {                                           \
        fprintf(stdout, "fatal=" __VA_ARGS__);     \
        fprintf(stdout, "\n");                     \
        fflush(stdout);                            \
        exit(3);                                   \
    } while (0)

#define MUST(call)                                                            \
    do {                                                                      \
        CUresult r_ = (call);                                                 \
        if (r_ != CUDA_SUCCESS)                                               \
            DIE("%s:%d %s -> %d", __FILE__, __LINE__, #call, (int)r_);      \
    } while (0)

static inline void say(const char *key, long long v)
{
    printf("%s=%lld\n", key, v);
    fflush(stdout);
}

/* Blocks until the driver (pytest) writes a line: lets it read the region at a known point. */
static inline void hold(const char *tag)
{
    printf("hold=%s\n", tag);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof(line), stdin))
        exit(0);
}

/* cuInit + primary context of CUDA ordinal `ordinal` made current. */
static inline CUcontext setup(int ordinal)
{
    MUST(cuInit(0));
    CUdevice d;
    MUST(cuDeviceGet(&d, ordinal));
    CUcontext c;
    MUST(cuDevicePrimaryCtxRetain(&c, d));
    MUST(cuCtxSetCurrent(c));
    return c;
}

static inline void *fake_fn(const char *name)
{
    void *p = dlsym(RTLD_DEFAULT, name);
    if (!p)
        DIE("stand-in driver control %s missing", name);
    return p;
}

static inline unsigned long fake_calls(const char *name)
{
    return ((fakegpu_calls_fn)(uintptr_t)fake_fn("fakegpu_calls"))(name);
}

static inline uint64_t fake_used(int dev)
{
    return ((fakegpu_used_bytes_fn)(uintptr_t)fake_fn("fakegpu_used_bytes"))(dev);
}

/* Which library a function pointer lives in ("shim", "driver" or "other"). */
static inline const char *owner(void *fn)
{
    Dl_info info;
    if (!fn || !dladdr(fn, &info) || !info.dli_fname)
        return "none";
    if (strstr(info.dli_fname, "libhami-cuda"))
        return "shim";
    if (strstr(info.dli_fname, "libcuda"))
        return "driver";
    return "other";
}

#endif
