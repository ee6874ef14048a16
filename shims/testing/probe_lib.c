/* Two copies of this library (PROBE_ID 'a' and 'b') both define probe(); probe_next() in copy 'a'
 * asks dlsym(RTLD_NEXT) for probe and must get copy 'b' (HAMi#2903: resolved relative to the
 * shim, it returned copy 'a' itself). */
#include <dlfcn.h>
#include <stdint.h>

__attribute__((visibility("default"))) char probe(void) { return PROBE_ID; }

__attribute__((visibility("default"))) char probe_next(void)
{
    char (*next)(void) = (char (*)(void))(uintptr_t)dlsym(RTLD_NEXT, "probe");
    return next ? next() : '0';
}
