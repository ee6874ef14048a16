/* Control API of the stand-in libcuda.so.1, resolved by test programs with dlsym (never hooked). */
#ifndef HAMI_FAKEGPU_H
#define HAMI_FAKEGPU_H

#include <stdint.h>

/* Calls of the exact entry point `name` made in this process (so a test can tell which variant of
 * a versioned or per-thread entry point a resolved pointer reaches). */
typedef unsigned long (*fakegpu_calls_fn)(const char *name);
/* Device memory the fake driver holds on CUDA ordinal `dev` (allocations, pools, contexts). */
typedef uint64_t (*fakegpu_used_bytes_fn)(int dev);
/* Makes the driver report `mib` MiB free on `dev` (other tenants use the rest). */
typedef void (*fakegpu_set_free_mib_fn)(int dev, uint64_t mib);
/* Virtual busy time accumulated by launches on `dev`, in nanoseconds. */
typedef uint64_t (*fakegpu_busy_ns_fn)(int dev);
/* The virtual clock of `dev`: device time executed so far (launches run back to back, each for
 * blocks x threads x thread_ns / SMs) and the CLOCK_MONOTONIC time of the reading, in ns. The
 * utilisation over an interval is the difference of done_ns over the difference of now_ns. */
typedef void (*fakegpu_clock_fn)(int dev, uint64_t *done_ns, uint64_t *now_ns);
/* Contexts ever created on `dev` (primary or not) in this process. */
typedef unsigned long (*fakegpu_contexts_fn)(int dev);

#endif
