/* Sharded open-addressing map (see alloc_map.h). */
#include "alloc_map.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define SHARDS 64
#define INITIAL_CAP 64

struct shard {
    atomic_int lock;
    uint32_t cap; /* power of two */
    uint32_t count;
    struct hami_entry *slots;
    char pad[40];
};

static struct shard shards[SHARDS];

static inline uint64_t mix(uint64_t k)
{
    k ^= k >> 31;
    k *= 0x9e3779b97f4a7c15ull;
    k ^= k >> 29;
    return k;
}

static inline void lock(struct shard *s)
{
    for (int spins = 0;; spins++) {
        if (!atomic_load_explicit(&s->lock, memory_order_relaxed) &&
            !atomic_exchange_explicit(&s->lock, 1, memory_order_acquire))
            return;
        if (spins > 64)
            sched_yield();
    }
}

static inline void unlock(struct shard *s) { atomic_store_explicit(&s->lock, 0, memory_order_release); }

static inline uint64_t hkey(int kind, uint64_t key) { return mix(key ^ ((uint64_t)kind << 58)); }

static int grow(struct shard *s)
{
    uint32_t ncap = s->cap ? s->cap * 2 : INITIAL_CAP;
    struct hami_entry *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -1;
    for (uint32_t i = 0; i < s->cap; i++) {
        struct hami_entry *e = &s->slots[i];
        if (!e->kind)
            continue;
        uint32_t j = (uint32_t)(hkey(e->kind, e->key) >> 6) & (ncap - 1);
        while (ns[j].kind)
            j = (j + 1) & (ncap - 1);
        ns[j] = *e;
    }
    free(s->slots);
    s->slots = ns;
    s->cap = ncap;
    return 0;
}

static inline int64_t find(struct shard *s, int kind, uint64_t key, uint64_t h)
{
    if (!s->cap)
        return -1;
    uint32_t m = s->cap - 1;
    for (uint32_t j = (uint32_t)(h >> 6) & m;; j = (j + 1) & m) {
        struct hami_entry *e = &s->slots[j];
        if (!e->kind)
            return -1;
        if (e->key == key && e->kind == kind)
            return j;
    }
}

int hami_map_put(int kind, uint64_t key, int dev, uint64_t size, void *aux)
{
    uint64_t h = hkey(kind, key);
    struct shard *s = &shards[h & (SHARDS - 1)];
    lock(s);
    int64_t at = find(s, kind, key, h);
    if (at < 0) {
        if ((s->count + 1) * 2 > s->cap && grow(s) != 0) {
            unlock(s);
            return -1;
        }
        uint32_t m = s->cap - 1, j = (uint32_t)(h >> 6) & m;
        while (s->slots[j].kind)
            j = (j + 1) & m;
        at = j;
        s->count++;
    }
    s->slots[at] = (struct hami_entry){key, size, aux, dev, kind};
    unlock(s);
    return 0;
}

int hami_map_get(int kind, uint64_t key, struct hami_entry *out)
{
    uint64_t h = hkey(kind, key);
    struct shard *s = &shards[h & (SHARDS - 1)];
    lock(s);
    int64_t at = find(s, kind, key, h);
    if (at >= 0)
        *out = s->slots[at];
    unlock(s);
    return at >= 0;
}

int hami_map_take(int kind, uint64_t key, struct hami_entry *out)
{
    uint64_t h = hkey(kind, key);
    struct shard *s = &shards[h & (SHARDS - 1)];
    lock(s);
    int64_t at = find(s, kind, key, h);
    if (at < 0) {
        unlock(s);
        return 0;
    }
    *out = s->slots[at];
    /* Backward-shift deletion keeps probe chains intact without tombstones. */
    uint32_t m = s->cap - 1, hole = (uint32_t)at, j = hole;
    for (;;) {
        j = (j + 1) & m;
        struct hami_entry *e = &s->slots[j];
        if (!e->kind)
            break;
        uint32_t home = (uint32_t)(hkey(e->kind, e->key) >> 6) & m;
        /* move e into the hole if its home is not in (hole, j] (cyclically) */
        if (((j - home) & m) >= ((j - hole) & m)) {
            s->slots[hole] = *e;
            hole = j;
        }
    }
    memset(&s->slots[hole], 0, sizeof(s->slots[hole]));
    s->count--;
    unlock(s);
    return 1;
}

void hami_map_reset(void)
{
    for (int i = 0; i < SHARDS; i++) {
        atomic_store(&shards[i].lock, 0);
        shards[i].slots = NULL; /* the parent's table is left to the parent's copy of memory */
        shards[i].cap = 0;
        shards[i].count = 0;
    }
}

uint64_t hami_map_size(void)
{
    uint64_t n = 0;
    for (int i = 0; i < SHARDS; i++) {
        lock(&shards[i]);
        n += shards[i].count;
        unlock(&shards[i]);
    }
    return n;
}
