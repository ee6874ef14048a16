/* Compute-limiter workload: `util <warm_s> <measure_s> <api>`, api = kernel, ex, coop or graph.
 *
 * Launches back to back on CUDA ordinal 0 for <warm_s> seconds (the controller settles), then
 * for <measure_s> more, and prints the device's share over the second phase from the stand-in
 * driver's virtual clock: share_x100 = 10000 x executed device time / elapsed clock time
 * (fakegpu_clock), the launch count and what the region shows right then, then holds ("measured"). A graph holds four kernel nodes of the same shape as
 * the plain launches (8 blocks x 128 threads), so it costs four kernels. */
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "region.h"
#include "snippet.h"

/* What the monitor sees at the end of the measured phase (the latest controller tick): this
 * process's sm_util on device position 0 and the controller's utilisation; -1 without a region. */
static void report_region(void)
{
    long long sm = -1, util = -1;
    const char *path = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    int fd = path ? open(path, O_RDONLY) : -1;
    char *base = fd >= 0 ? mmap(NULL, HAMI_FILE_SIZE, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (base != MAP_FAILED) {
        struct hami_region_v1 *v1 = (struct hami_region_v1 *)base;
        struct hami_ext *ext = (struct hami_ext *)(base + HAMI_EXT_OFFSET);
        for (int i = 0; i < atomic_load(&v1->proc_num) && i < HAMI_MAX_PROCS; i++)
            if (atomic_load(&v1->procs[i].pid) == getpid())
                sm = (long long)atomic_load(&v1->procs[i].device_util[0].sm_util);
        util = (long long)atomic_load(&ext->dev[0].util_x100);
        munmap(base, HAMI_FILE_SIZE);
    }
    if (fd >= 0)
        close(fd);
    say("slot_sm_util", sm);
    say("ctl_util_x100", util);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static CUfunction f = (CUfunction)(uintptr_t)1;
static CUgraphExec ge;
static CUlaunchConfig lc = {.gridDimX = 8, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 128,
                            .blockDimY = 1, .blockDimZ = 1};

static long long run(const char *api, double secs)
{
    long long k = 0;
    double t0 = now_s();
    while (now_s() - t0 < secs) {
        if (!strcmp(api, "graph"))
            MUST(cuGraphLaunch(ge, NULL));
        else if (!strcmp(api, "coop"))
            MUST(cuLaunchCooperativeKernel(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL));
        else if (!strcmp(api, "ex"))
            MUST(cuLaunchKernelEx(&lc, f, NULL, NULL));
        else
            MUST(cuLaunchKernel(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL, NULL));
        k++;
    }
    return k;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        DIE("usage: util <warm_s> <measure_s> <api>");
    double warm = atof(argv[1]), measure = atof(argv[2]);
    const char *api = argv[3];
    setup(0);
    CUgraph g;
    MUST(cuGraphCreate(&g, 0));
    CUDA_KERNEL_NODE_PARAMS kp;
    memset(&kp, 0, sizeof(kp));
    kp.func = f;
    kp.gridDimX = 8;
    kp.gridDimY = kp.gridDimZ = 1;
    kp.blockDimX = 128;
    kp.blockDimY = kp.blockDimZ = 1;
    for (int i = 0; i < 4; i++) {
        CUgraphNode node;
        MUST(cuGraphAddKernelNode_v2(&node, g, NULL, 0, &kp));
    }
    MUST(cuGraphInstantiateWithFlags(&ge, g, 0));
    fakegpu_clock_fn clk = (fakegpu_clock_fn)(uintptr_t)fake_fn("fakegpu_clock");
    run(api, warm);
    uint64_t b0, t0, b1, t1;
    clk(0, &b0, &t0);
    long long k = run(api, measure);
    clk(0, &b1, &t1);
    report_region();
    say("launches", k);
    say("share_x100", (long long)((b1 - b0) * 10000 / (t1 - t0)));
    hold("measured");
    MUST(cuGraphExecDestroy(ge));
    return 0;
}
