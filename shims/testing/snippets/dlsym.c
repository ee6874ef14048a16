/* dlsym behaviour with the shim preloaded (shim-contract.md 13, item 2). */
#include "snippet.h"

char probe(void);
char probe_next(void);

int main(void)
{
    void *a = dlsym(RTLD_NEXT, "puts");
    void *b = dlsym(RTLD_NEXT, "puts");
    say("next_puts_1", a != NULL);
    say("next_puts_2", b != NULL);
    say("next_puts_same", a == b);
    printf("probe=%c\n", probe());
    printf("probe_next=%c\n", probe_next());
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    printf("handle.cuMemAlloc_v2=%s\n", owner(dlsym(h, "cuMemAlloc_v2")));
    printf("handle.cuDeviceGetName=%s\n", owner(dlsym(h, "cuDeviceGetName")));
    printf("default.cuMemAlloc_v2=%s\n", owner(dlsym(RTLD_DEFAULT, "cuMemAlloc_v2")));
    say("default.curl_easy_init", dlsym(RTLD_DEFAULT, "curl_easy_init") != NULL);
    return 0;
}
