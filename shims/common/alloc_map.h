/* Per-process map of what the shim charged: (kind, address or handle) -> (device, bytes, aux).
 *
 * O(1) expected per operation: 64 shards, each an open-addressing table with linear probing and
 * backward-shift deletion (no tombstones), guarded by a spinlock that only spins under contention.
 * Frees of keys that are not in the map are the caller's to pass through.
 */
#ifndef HAMI_ALLOC_MAP_H
#define HAMI_ALLOC_MAP_H

#include <stdint.h>

enum hami_kind {
    HAMI_K_PTR = 1,   /* cuMemAlloc*, pitch, managed */
    HAMI_K_ASYNC,     /* stream-ordered allocation: aux = pool */
    HAMI_K_VMM,       /* cuMemCreate handle */
    HAMI_K_ARRAY,     /* CUarray */
    HAMI_K_MIPMAP,    /* CUmipmappedArray */
    HAMI_K_POOL,      /* a pool's charge: key = pool, size = charged bytes */
    HAMI_K_CTX,       /* a context made by cuCtxCreate*: size = its charged overhead */
    HAMI_K_GRAPH,     /* an instantiated graph: size = launch cost (kernel work), not memory */
    HAMI_K_GRAPHMEM,  /* an executable graph with memory nodes: aux = device mask, size = 1 until
                         its first launch */
    HAMI_K_GRAPHPOOL, /* a device's graph memory pool: key = position, size = charged bytes */
    HAMI_K_LIMIT,     /* a context's heap or printf FIFO: key = context * 8 + limit */
};

struct hami_entry {
    uint64_t key;
    uint64_t size;
    void *aux;
    int32_t dev;
    int32_t kind; /* 0 = empty */
};

/* Inserts or replaces. Returns 0, or -1 when memory for the table cannot be obtained. */
int hami_map_put(int kind, uint64_t key, int dev, uint64_t size, void *aux);
/* Removes and returns the entry; 0 if absent. */
int hami_map_take(int kind, uint64_t key, struct hami_entry *out);
/* Copies the entry; 0 if absent. */
int hami_map_get(int kind, uint64_t key, struct hami_entry *out);
/* Forgets everything (fork child: the parent's device allocations are not the child's). */
void hami_map_reset(void);
/* Number of entries (tests, debug). */
uint64_t hami_map_size(void);

#endif
