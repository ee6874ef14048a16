/* Multi-threaded, multi-device allocation traffic for the accounting tests.
 *
 *   stress random <threads> <ops> <seed> <ndev> <max_bytes>
 *       random alloc/free (cuMemAlloc_v2, cuMemAllocManaged, cuMemCreate) on random devices;
 *       prints live_<ordinal>=<bytes still allocated> and ooms=<refusals>, holds, exits without
 *       freeing (the slot is released at exit).
 *   stress race <bytes>      one cuMemAlloc_v2 on device 0; prints rc; holds.
 *   stress midalloc          holds 600 MiB, then allocates and frees 1 MiB forever (pytest
 *                            SIGKILLs it mid-allocation).
 */
#include <pthread.h>

#include "snippet.h"

#define MAXDEV 16

struct item {
    int kind, dev;
    uint64_t size;
    CUdeviceptr p;
    CUmemGenericAllocationHandle h;
};

static CUcontext ctxs[MAXDEV];
static int ndev, ops;
static uint64_t max_bytes;
static unsigned seed0;
static uint64_t live[MAXDEV];
static long long ooms;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg)
{
    unsigned seed = seed0 * 7919u + (unsigned)(uintptr_t)arg * 104729u;
    struct item *items = calloc(4096, sizeof(*items));
    int n = 0;
    long long my_ooms = 0;
    uint64_t gran = 2 * MIB;
    for (int i = 0; i < ops; i++) {
        int dev = (int)(rand_r(&seed) % (unsigned)ndev);
        if (n > 0 && (n >= 4096 || rand_r(&seed) % 100 < 45)) {
            int k = (int)(rand_r(&seed) % (unsigned)n);
            struct item it = items[k];
            items[k] = items[--n];
            MUST(cuCtxSetCurrent(ctxs[it.dev]));
            if (it.kind == 2)
                MUST(cuMemRelease(it.h));
            else
                MUST(cuMemFree_v2(it.p));
            continue;
        }
        MUST(cuCtxSetCurrent(ctxs[dev]));
        struct item it = {.kind = (int)(rand_r(&seed) % 3), .dev = dev};
        it.size = 1 + ((uint64_t)rand_r(&seed) * 7919u) % max_bytes;
        CUresult r;
        if (it.kind == 0) {
            r = cuMemAlloc_v2(&it.p, it.size);
        } else if (it.kind == 1) {
            r = cuMemAllocManaged(&it.p, it.size, CU_MEM_ATTACH_GLOBAL);
        } else {
            it.size = (it.size + gran - 1) / gran * gran;
            CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                        .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = dev}};
            r = cuMemCreate(&it.h, it.size, &prop, 0);
        }
        if (r == CUDA_ERROR_OUT_OF_MEMORY) {
            my_ooms++;
            continue;
        }
        if (r != CUDA_SUCCESS)
            DIE("alloc kind %d -> %d", it.kind, (int)r);
        items[n++] = it;
    }
    pthread_mutex_lock(&mu);
    for (int k = 0; k < n; k++)
        live[items[k].dev] += items[k].size;
    ooms += my_ooms;
    pthread_mutex_unlock(&mu);
    free(items);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        DIE("usage");
    if (!strcmp(argv[1], "race")) {
        setup(0);
        CUdeviceptr p;
        say("rc", cuMemAlloc_v2(&p, strtoull(argv[2], NULL, 10)));
        hold("raced");
        return 0;
    }
    if (!strcmp(argv[1], "midalloc")) {
        /* 600 MiB held, then 1 MiB alloc/free pairs until killed */
        setup(0);
        CUdeviceptr p;
        for (int i = 0; i < 600; i++)
            MUST(cuMemAlloc_v2(&p, MIB));
        printf("hold=running\n");
        fflush(stdout);
        for (;;) {
            MUST(cuMemAlloc_v2(&p, MIB));
            MUST(cuMemFree_v2(p));
        }
    }
    int threads = atoi(argv[2]);
    ops = atoi(argv[3]);
    seed0 = (unsigned)atoi(argv[4]);
    ndev = atoi(argv[5]);
    max_bytes = strtoull(argv[6], NULL, 10);
    MUST(cuInit(0));
    for (int d = 0; d < ndev; d++) {
        CUdevice dv;
        MUST(cuDeviceGet(&dv, d));
        MUST(cuDevicePrimaryCtxRetain(&ctxs[d], dv));
    }
    pthread_t t[64];
    for (int i = 0; i < threads && i < 64; i++)
        pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
    for (int i = 0; i < threads && i < 64; i++)
        pthread_join(t[i], NULL);
    for (int d = 0; d < ndev; d++) {
        char key[32];
        snprintf(key, sizeof(key), "live_%d", d);
        say(key, (long long)live[d]);
    }
    say("ooms", ooms);
    hold("done");
    return 0;
}
