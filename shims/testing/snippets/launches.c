/* Launches through every hooked launch entry point: `launches <n> [seconds]`. Prints the number
 * of launches that reached the stand-in driver per variant and the virtual busy time. With
 * [seconds], loops launching cuLaunchKernel for that long and prints the achieved launch count. */
#include <time.h>

#include "snippet.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1;
    setup(0);
    CUfunction f = (CUfunction)(uintptr_t)1;
    CUlaunchConfig cfg = {.gridDimX = 8, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 128,
                          .blockDimY = 1, .blockDimZ = 1};
    CUgraph g;
    CUgraphExec ge;
    MUST(cuGraphCreate(&g, 0));
    CUDA_KERNEL_NODE_PARAMS kp;
    memset(&kp, 0, sizeof(kp));
    kp.func = f;
    kp.gridDimX = kp.gridDimY = kp.gridDimZ = 1;
    kp.blockDimX = 64;
    kp.blockDimY = kp.blockDimZ = 1;
    CUgraphNode node;
    MUST(cuGraphAddKernelNode_v2(&node, g, NULL, 0, &kp));
    MUST(cuGraphInstantiateWithFlags(&ge, g, 0));
    for (int i = 0; i < n; i++) {
        MUST(cuLaunchKernel(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL, NULL));
        MUST(cuLaunchKernel_ptsz(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL, NULL));
        MUST(cuLaunchKernelEx(&cfg, f, NULL, NULL));
        MUST(cuLaunchKernelEx_ptsz(&cfg, f, NULL, NULL));
        MUST(cuLaunchCooperativeKernel(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL));
        MUST(cuLaunchCooperativeKernel_ptsz(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL));
        MUST(cuGraphLaunch(ge, NULL));
        MUST(cuGraphLaunch_ptsz(ge, NULL));
    }
    static const char *const names[] = {"cuLaunchKernel", "cuLaunchKernel_ptsz", "cuLaunchKernelEx",
        "cuLaunchKernelEx_ptsz", "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz",
        "cuGraphLaunch", "cuGraphLaunch_ptsz"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        say(names[i], (long long)fake_calls(names[i]));
    if (argc > 2) {
        double secs = atof(argv[2]), t0 = now_s();
        long long k = 0;
        uint64_t b0 = ((fakegpu_busy_ns_fn)(uintptr_t)fake_fn("fakegpu_busy_ns"))(0);
        const char *api = argc > 3 ? argv[3] : "kernel";
        while (now_s() - t0 < secs) {
            if (!strcmp(api, "graph"))
                MUST(cuGraphLaunch(ge, NULL));
            else if (!strcmp(api, "coop"))
                MUST(cuLaunchCooperativeKernel(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL));
            else
                MUST(cuLaunchKernel(f, 8, 1, 1, 128, 1, 1, 0, NULL, NULL, NULL));
            k++;
        }
        uint64_t b1 = ((fakegpu_busy_ns_fn)(uintptr_t)fake_fn("fakegpu_busy_ns"))(0);
        say("timed_launches", k);
        say("busy_ns", (long long)(b1 - b0));
    }
    hold("launched");
    return 0;
}
