/* A program that never uses CUDA but looks up cu-prefixed names (curl_*, cuInit through
 * RTLD_DEFAULT): with the shim preloaded it must create no region file and print nothing. */
#include <dlfcn.h>
#include <stdio.h>

int main(void)
{
    void *p = dlsym(RTLD_DEFAULT, "curl_easy_init");
    void *q = dlsym(RTLD_DEFAULT, "cuda_nonexistent_symbol");
    printf("curl=%d cuda=%d\n", p != NULL, q != NULL);
    return 0;
}
