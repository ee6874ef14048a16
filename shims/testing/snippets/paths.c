/* One allocation path, driven by pytest: `paths <path> <size_bytes> <count>`.
 *
 * Allocates up to <count> objects of <size> through <path>, printing rc_<i>=<CUresult>; then
 * holds (pytest reads the region), frees everything (free_<i>=<rc>), holds again. Paths: alloc,
 * pitch, managed, async, async_ptsz, pool, pool_ptsz, vmm, array, array3d, mipmap, host,
 * unknown_free.
 */
#include "snippet.h"

struct obj {
    CUdeviceptr p;
    CUmemGenericAllocationHandle h;
    CUarray a;
    CUmipmappedArray m;
    void *host;
};

int main(int argc, char **argv)
{
    if (argc < 4)
        DIE("usage: paths <path> <size> <count>");
    const char *path = argv[1];
    uint64_t size = strtoull(argv[2], NULL, 10);
    int count = atoi(argv[3]);
    setup(0);
    CUmemoryPool pool = NULL;
    if (!strncmp(path, "pool", 4)) {
        CUmemPoolProps props;
        memset(&props, 0, sizeof(props));
        props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        props.location.id = 0;
        MUST(cuMemPoolCreate(&pool, &props));
    }
    if (!strcmp(path, "unknown_free")) {
        unsigned long before = fake_calls("cuMemFree_v2");
        say("rc", cuMemFree_v2((CUdeviceptr)0xdeadbeef000ull));
        say("reached_driver", fake_calls("cuMemFree_v2") - before);
        before = fake_calls("cuMemRelease");
        say("release_rc", cuMemRelease(987654321ull));
        say("release_reached_driver", fake_calls("cuMemRelease") - before);
        return 0;
    }
    struct obj *objs = calloc((size_t)count, sizeof(*objs));
    int ok = 0;
    for (int i = 0; i < count; i++) {
        CUresult r = CUDA_ERROR_INVALID_VALUE;
        struct obj *o = &objs[i];
        if (!strcmp(path, "alloc")) {
            r = cuMemAlloc_v2(&o->p, size);
        } else if (!strcmp(path, "pitch")) {
            size_t pitch = 0;
            /* width not a multiple of 512: the driver rounds the pitch up */
            r = cuMemAllocPitch_v2(&o->p, &pitch, (size_t)(size / 1024) - 100, 1024, 4);
            if (r == CUDA_SUCCESS)
                say("pitch", (long long)pitch);
        } else if (!strcmp(path, "managed")) {
            r = cuMemAllocManaged(&o->p, size, CU_MEM_ATTACH_GLOBAL);
        } else if (!strcmp(path, "async")) {
            r = cuMemAllocAsync(&o->p, size, NULL);
        } else if (!strcmp(path, "async_ptsz")) {
            r = cuMemAllocAsync_ptsz(&o->p, size, NULL);
        } else if (!strcmp(path, "pool")) {
            r = cuMemAllocFromPoolAsync(&o->p, size, pool, NULL);
        } else if (!strcmp(path, "pool_ptsz")) {
            r = cuMemAllocFromPoolAsync_ptsz(&o->p, size, pool, NULL);
        } else if (!strcmp(path, "vmm")) {
            CUmemAllocationProp prop;
            memset(&prop, 0, sizeof(prop));
            prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
            prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            prop.location.id = 0;
            r = cuMemCreate(&o->h, size, &prop, 0);
        } else if (!strcmp(path, "array")) {
            CUDA_ARRAY_DESCRIPTOR d = {.Width = 1024, .Height = (size_t)(size / 4096) + 1,
                                       .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
            r = cuArrayCreate_v2(&o->a, &d);
        } else if (!strcmp(path, "array3d")) {
            CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 256, .Height = 256, .Depth = (size_t)(size / 262144),
                                         .Format = CU_AD_FORMAT_UNSIGNED_INT8, .NumChannels = 4};
            r = cuArray3DCreate_v2(&o->a, &d);
        } else if (!strcmp(path, "mipmap")) {
            CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 2048, .Height = (size_t)(size / 8192),
                                         .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
            r = cuMipmappedArrayCreate(&o->m, &d, 4);
        } else if (!strcmp(path, "host")) {
            r = cuMemAllocHost_v2(&o->host, size);
        } else {
            DIE("unknown path %s", path);
        }
        char key[32];
        snprintf(key, sizeof(key), "rc_%d", i);
        say(key, r);
        if (r != CUDA_SUCCESS)
            break;
        ok++;
    }
    say("allocated", ok);
    say("driver_used", (long long)fake_used(0));
    hold("allocated");
    for (int i = 0; i < ok; i++) {
        struct obj *o = &objs[i];
        CUresult r;
        if (!strcmp(path, "vmm"))
            r = cuMemRelease(o->h);
        else if (!strncmp(path, "array", 5))
            r = cuArrayDestroy(o->a);
        else if (!strcmp(path, "mipmap"))
            r = cuMipmappedArrayDestroy(o->m);
        else if (!strcmp(path, "host"))
            r = cuMemFreeHost(o->host);
        else if (!strncmp(path, "async", 5) || !strncmp(path, "pool", 4))
            r = !strcmp(path, "async_ptsz") || !strcmp(path, "pool_ptsz") ? cuMemFreeAsync_ptsz(o->p, NULL)
                                                                             : cuMemFreeAsync(o->p, NULL);
        else
            r = cuMemFree_v2(o->p);
        char key[32];
        snprintf(key, sizeof(key), "free_%d", i);
        say(key, r);
    }
    if (pool) {
        say("trim_rc", cuMemPoolTrimTo(pool, 0));
        say("pool_destroy_rc", cuMemPoolDestroy(pool));
    }
    say("driver_used_after", (long long)fake_used(0));
    hold("freed");
    return 0;
}
