/* No global side effects (shim-contract.md 9): umask and SIGUSR1/SIGUSR2 handlers are unchanged
 * after initialisation, allocation and launches; the region file is created 0666 regardless. */
#include <signal.h>
#include <sys/stat.h>

#include "snippet.h"

static void h1(int s) { (void)s; }
static void h2(int s) { (void)s; }

int main(void)
{
    umask(077);
    struct sigaction sa = {0}, o1, o2;
    sa.sa_handler = h1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = h2;
    sigaction(SIGUSR2, &sa, NULL);
    setup(0);
    CUdeviceptr p;
    MUST(cuMemAlloc_v2(&p, MIB));
    MUST(cuLaunchKernel((CUfunction)(uintptr_t)1, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    MUST(cuMemFree_v2(p));
    mode_t m = umask(0);
    umask(m);
    say("umask", (long long)m);
    sigaction(SIGUSR1, NULL, &o1);
    sigaction(SIGUSR2, NULL, &o2);
    say("sigusr1_kept", o1.sa_handler == h1);
    say("sigusr2_kept", o2.sa_handler == h2);
    FILE *f = fopen(getenv("PROBE_FILE"), "w");
    if (f)
        fclose(f);
    return 0;
}
