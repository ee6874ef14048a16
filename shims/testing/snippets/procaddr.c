/* Resolution the way the CUDA runtime does it: dlopen("libcuda.so.1"), dlsym(handle,
 * "cuGetProcAddress_v2"), then entry points by (name, cudaVersion, flags). For each request prints
 * the driver's result, symbolStatus, which library the pointer lives in, and which variant of the
 * stand-in driver a call through it reached. Not linked against the driver. */
#include "snippet.h"

typedef CUresult (*gpa_v2_fn)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
typedef CUresult (*gpa_v1_fn)(const char *, void **, int, cuuint64_t);
typedef unsigned long (*calls_fn)(const char *);

static void *lib;
static calls_fn calls;

static void *get(gpa_v2_fn gpa, const char *tag, const char *sym, int ver, cuuint64_t flags)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st = (CUdriverProcAddressQueryResult)99;
    CUresult r = gpa(sym, &fn, ver, flags, &st);
    printf("%s.rc=%d\n%s.status=%d\n%s.owner=%s\n", tag, (int)r, tag, (int)st, tag, owner(fn));
    return fn;
}

static void reached(const char *tag, const char *variant, unsigned long before)
{
    printf("%s.reached.%s=%lu\n", tag, variant, calls(variant) - before);
}

int main(void)
{
    lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib)
        DIE("dlopen libcuda.so.1: %s", dlerror());
    gpa_v2_fn gpa = (gpa_v2_fn)(uintptr_t)dlsym(lib, "cuGetProcAddress_v2");
    calls = (calls_fn)(uintptr_t)dlsym(lib, "fakegpu_calls");
    if (!gpa || !calls)
        DIE("missing cuGetProcAddress_v2 / fakegpu_calls");
    printf("gpa.owner=%s\n", owner((void *)(uintptr_t)gpa));
    CUresult (*init)(unsigned) = (CUresult(*)(unsigned))(uintptr_t)get(gpa, "cuInit", "cuInit", 12000, 0);
    if (!init || init(0) != CUDA_SUCCESS)
        DIE("cuInit");
    CUresult (*dget)(CUdevice *, int) = (CUresult(*)(CUdevice *, int))(uintptr_t)get(gpa, "cuDeviceGet", "cuDeviceGet", 12000, 0);
    CUdevice dev;
    dget(&dev, 0);

    /* cuCtxCreate by version: _v2 (3 args), _v3 (5 args), _v4 (4 args) */
    static const struct { int ver; const char *variant; } cc[] = {
        {11040, "cuCtxCreate_v3"}, {12000, "cuCtxCreate_v3"}, {13000, "cuCtxCreate_v4"}, {3020, "cuCtxCreate_v2"}};
    for (size_t i = 0; i < sizeof(cc) / sizeof(cc[0]); i++) {
        char tag[64];
        snprintf(tag, sizeof(tag), "cuCtxCreate@%d", cc[i].ver);
        void *fn = get(gpa, tag, "cuCtxCreate", cc[i].ver, 0);
        unsigned long before = calls(cc[i].variant);
        CUcontext ctx = NULL;
        CUresult r;
        if (!strcmp(cc[i].variant, "cuCtxCreate_v2"))
            r = ((CUresult(*)(CUcontext *, unsigned, CUdevice))(uintptr_t)fn)(&ctx, 0, dev);
        else if (!strcmp(cc[i].variant, "cuCtxCreate_v3"))
            r = ((CUresult(*)(CUcontext *, CUexecAffinityParam *, int, unsigned, CUdevice))(uintptr_t)fn)(&ctx, NULL, 0, 0, dev);
        else
            r = ((CUresult(*)(CUcontext *, CUctxCreateParams *, unsigned, CUdevice))(uintptr_t)fn)(&ctx, NULL, 0, dev);
        printf("%s.call_rc=%d\n", tag, (int)r);
        reached(tag, cc[i].variant, before);
    }
    get(gpa, "cuCtxCreate@1000", "cuCtxCreate", 1000, 0);
    get(gpa, "nosuch", "cuNoSuchFunction", 12000, 0);

    /* per-thread default stream variants */
    void *lk = get(gpa, "cuLaunchKernel@ptds", "cuLaunchKernel", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    unsigned long b1 = calls("cuLaunchKernel_ptsz"), b2 = calls("cuLaunchKernel");
    ((CUresult(*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, void **))(uintptr_t)lk)(
        (CUfunction)(uintptr_t)1, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
    reached("cuLaunchKernel@ptds", "cuLaunchKernel_ptsz", b1);
    reached("cuLaunchKernel@ptds", "cuLaunchKernel", b2);
    void *lk2 = get(gpa, "cuLaunchKernel@legacy", "cuLaunchKernel", 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
    b1 = calls("cuLaunchKernel_ptsz");
    b2 = calls("cuLaunchKernel");
    ((CUresult(*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, void **))(uintptr_t)lk2)(
        (CUfunction)(uintptr_t)1, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
    reached("cuLaunchKernel@legacy", "cuLaunchKernel_ptsz", b1);
    reached("cuLaunchKernel@legacy", "cuLaunchKernel", b2);

    /* cuMemAllocAsync per-thread: reaches _ptsz and is charged */
    CUcontext pctx;
    ((CUresult(*)(CUcontext *, CUdevice))(uintptr_t)get(gpa, "retain", "cuDevicePrimaryCtxRetain", 12000, 0))(&pctx, dev);
    ((CUresult(*)(CUcontext))(uintptr_t)get(gpa, "setcur", "cuCtxSetCurrent", 12000, 0))(pctx);
    void *aa = get(gpa, "cuMemAllocAsync@ptds", "cuMemAllocAsync", 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    b1 = calls("cuMemAllocAsync_ptsz");
    CUdeviceptr p = 0;
    printf("cuMemAllocAsync@ptds.call_rc=%d\n", (int)((CUresult(*)(CUdeviceptr *, size_t, CUstream))(uintptr_t)aa)(&p, 8 * MIB, NULL));
    reached("cuMemAllocAsync@ptds", "cuMemAllocAsync_ptsz", b1);

    /* cuMemAdvise: v1 takes a device, _v2 a location (exact ABI per variant, passed through) */
    get(gpa, "cuMemAdvise@12000", "cuMemAdvise", 12000, 0);
    b1 = calls("cuMemAdvise");
    void *adv = get(gpa, "cuMemAdvise@12000b", "cuMemAdvise", 12000, 0);
    ((CUresult(*)(CUdeviceptr, size_t, CUmem_advise, CUdevice))(uintptr_t)adv)(p, MIB, CU_MEM_ADVISE_SET_READ_MOSTLY, 0);
    reached("cuMemAdvise@12000", "cuMemAdvise", b1);
    void *adv2 = get(gpa, "cuMemAdvise@12020", "cuMemAdvise", 12020, 0);
    b1 = calls("cuMemAdvise_v2");
    CUmemLocation loc = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0};
    ((CUresult(*)(CUdeviceptr, size_t, CUmem_advise, CUmemLocation))(uintptr_t)adv2)(p, MIB, CU_MEM_ADVISE_SET_READ_MOSTLY, loc);
    reached("cuMemAdvise@12020", "cuMemAdvise_v2", b1);

    /* the resolver itself, and the 4-argument cuGetProcAddress */
    get(gpa, "cuGetProcAddress@12000", "cuGetProcAddress", 12000, 0);
    gpa_v1_fn gpa1 = (gpa_v1_fn)(uintptr_t)dlsym(lib, "cuGetProcAddress");
    void *fn1 = NULL;
    printf("v1.rc=%d\n", (int)gpa1("cuMemAlloc", &fn1, 11030, 0));
    printf("v1.owner=%s\n", owner(fn1));
    void *direct = dlsym(lib, "cuMemAlloc_v2");
    printf("dlsym_handle.cuMemAlloc_v2.owner=%s\n", owner(direct));
    printf("dlsym_handle.cuMemsetD8_v2.owner=%s\n", owner(dlsym(lib, "cuMemsetD8_v2")));
    hold("resolved");
    return 0;
}
