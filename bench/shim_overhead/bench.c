/* Per-call cost of hooked entry points over the no-op stand-in driver: run once directly and once
 * with the shim preloaded (bench/shim_overhead/run.py), the difference is the shim's overhead.
 * Prints `<case> <median ns per call>`; medians of REPEATS runs.
 *
 * An idle helper thread runs in both cases unless BENCH_SINGLE_THREAD is set: a CUDA process is
 * never single-threaded (the real driver starts its own threads at cuInit, and the shim starts its
 * watcher thread), and glibc takes cheaper paths in a single-threaded process (malloc, locks),
 * which would make the direct run unrealistically cheap and bill their loss to the shim. */
#include <cuda.h>
#include <pthread.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPEATS 7
#define MIB (1ull << 20)

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void check(CUresult r, const char *what)
{
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "%s failed: %d\n", what, (int)r);
        exit(1);
    }
}

static double launch(long n)
{
    CUfunction f = (CUfunction)(uintptr_t)1;
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        check(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL), "cuLaunchKernel");
    return (now_ns() - t0) / (double)n;
}

static double alloc_free(long n)
{
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        CUdeviceptr p;
        check(cuMemAlloc_v2(&p, MIB), "cuMemAlloc_v2");
        check(cuMemFree_v2(p), "cuMemFree_v2");
    }
    return (now_ns() - t0) / (double)n;
}

static double mem_info(long n)
{
    size_t f, t;
    double t0 = now_ns();
    for (long i = 0; i < n; i++)
        check(cuMemGetInfo_v2(&f, &t), "cuMemGetInfo_v2");
    return (now_ns() - t0) / (double)n;
}

static void report(const char *name, double (*fn)(long), long n)
{
    double r[REPEATS];
    fn(n / 10); /* warm-up */
    for (int i = 0; i < REPEATS; i++)
        r[i] = fn(n);
    qsort(r, REPEATS, sizeof(r[0]), cmp);
    printf("%s %.2f\n", name, r[REPEATS / 2]);
    fflush(stdout);
}

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

int main(void)
{
    if (!getenv("BENCH_SINGLE_THREAD")) {
        pthread_t t;
        pthread_create(&t, NULL, idle, NULL);
    }
    check(cuInit(0), "cuInit");
    CUdevice d;
    CUcontext c;
    check(cuDeviceGet(&d, 0), "cuDeviceGet");
    check(cuDevicePrimaryCtxRetain(&c, d), "retain");
    check(cuCtxSetCurrent(c), "set current");
    report("launch", launch, 1000000);
    report("alloc_free_0_live", alloc_free, 100000);
    report("mem_get_info", mem_info, 1000000);
    static CUdeviceptr live[1000];
    for (int i = 0; i < 1000; i++)
        check(cuMemAlloc_v2(&live[i], MIB), "cuMemAlloc_v2 (live)");
    report("alloc_free_1000_live", alloc_free, 100000);
    return 0;
}
