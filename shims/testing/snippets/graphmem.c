/* Graph memory nodes, driven by pytest: `graphmem <MiB>`.
 *
 * Two graphs, each with one allocation node of <MiB> on device 0 (and its free node). Prints the
 * instantiation results and the stand-in's used bytes, holding at each step: `one` (graph A
 * instantiated and launched), `second` (graph B instantiated: refused when A's and B's memory do
 * not fit the limit), `destroyed` (A's executable destroyed: the pool keeps its memory reserved),
 * `reused` (B instantiated again: it reuses the reservation), `trimmed` (B destroyed,
 * cuDeviceGraphMemTrim: the reservation is given back).
 */
#include "snippet.h"

typedef uint64_t (*used_fn)(int);

static CUgraph mem_graph(uint64_t bytes)
{
    CUgraph g;
    MUST(cuGraphCreate(&g, 0));
    CUDA_MEM_ALLOC_NODE_PARAMS p;
    memset(&p, 0, sizeof(p));
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.poolProps.location.id = 0;
    p.bytesize = bytes;
    CUgraphNode a, f;
    MUST(cuGraphAddMemAllocNode(&a, g, NULL, 0, &p));
    MUST(cuGraphAddMemFreeNode(&f, g, &a, 1, p.dptr));
    return g;
}

static void report(const char *step)
{
    char key[64];
    snprintf(key, sizeof(key), "%s.driver_used", step);
    say(key, (long long)fake_used(0));
    cuuint64_t v = 0;
    snprintf(key, sizeof(key), "%s.reserved", step);
    MUST(cuDeviceGetGraphMemAttribute(0, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &v));
    say(key, (long long)v);
    hold(step);
}

int main(int argc, char **argv)
{
    uint64_t bytes = (argc > 1 ? strtoull(argv[1], NULL, 10) : 64) * MIB;
    setup(0);
    CUgraph ga = mem_graph(bytes), gb = mem_graph(bytes);
    CUgraphExec ea = NULL, eb = NULL;
    say("inst_a_rc", cuGraphInstantiateWithFlags(&ea, ga, 0));
    say("launch_a_rc", cuGraphLaunch(ea, NULL));
    report("one");
    CUDA_GRAPH_INSTANTIATE_PARAMS ip;
    memset(&ip, 0, sizeof(ip));
    CUresult r = cuGraphInstantiateWithParams(&eb, gb, &ip);
    say("inst_b_rc", r);
    if (r == CUDA_SUCCESS)
        MUST(cuGraphExecDestroy(eb));
    report("second");
    say("destroy_a_rc", cuGraphExecDestroy(ea));
    report("destroyed");
    say("inst_b2_rc", cuGraphInstantiateWithFlags(&eb, gb, 0));
    report("reused");
    say("destroy_b_rc", cuGraphExecDestroy(eb));
    say("trim_rc", cuDeviceGraphMemTrim(0));
    report("trimmed");
    MUST(cuGraphDestroy(ga));
    MUST(cuGraphDestroy(gb));
    return 0;
}
