/* Context limits and module images, driven by pytest: `limits`.
 *
 * With the stand-in's costs (malloc heap and printf FIFO at their size, stack x resident threads,
 * module_kib per loaded module or library), prints each step's result and the stand-in's used
 * bytes of device 0 and holds: `heap` (64 MiB heap), `stack` (16 MiB FIFO, 256-byte stacks),
 * `loaded` (two modules and a library; then a 2 GiB heap is tried: heap_big_rc), `driver` (the
 * driver took 10 MiB on its own: only NVML shows it), `unloaded`, `released` (primary context
 * released).
 */
#include "snippet.h"

typedef void (*driver_alloc_fn)(int, uint64_t);

static void report(const char *step)
{
    char key[64];
    snprintf(key, sizeof(key), "%s.driver_used", step);
    say(key, (long long)fake_used(0));
    hold(step);
}

int main(void)
{
    setup(0);
    say("heap_rc", cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 64 * MIB));
    report("heap");
    say("fifo_rc", cuCtxSetLimit(CU_LIMIT_PRINTF_FIFO_SIZE, 16 * MIB));
    say("stack_rc", cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 256));
    report("stack");
    static const char image[] = "fake image";
    CUmodule m1, m2;
    CUlibrary lib;
    say("mod1_rc", cuModuleLoadData(&m1, image));
    say("mod2_rc", cuModuleLoadDataEx(&m2, image, 0, NULL, NULL));
    say("lib_rc", cuLibraryLoadData(&lib, image, NULL, NULL, 0, NULL, NULL, 0));
    say("heap_big_rc", cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 2048 * MIB));
    report("loaded");
    ((driver_alloc_fn)(uintptr_t)fake_fn("fakegpu_driver_alloc"))(0, 10 * MIB);
    report("driver");
    MUST(cuModuleUnload(m1));
    MUST(cuModuleUnload(m2));
    MUST(cuLibraryUnload(lib));
    report("unloaded");
    CUdevice d;
    MUST(cuCtxGetDevice(&d));
    MUST(cuDevicePrimaryCtxRelease(d));
    report("released");
    return 0;
}
