/* Hooked calls made before cuInit return what the driver returns (CUDA_ERROR_NOT_INITIALIZED). */
#include "snippet.h"

int main(void)
{
    CUdeviceptr p;
    size_t f, t;
    say("cuMemAlloc_v2", cuMemAlloc_v2(&p, MIB));
    say("cuMemAllocManaged", cuMemAllocManaged(&p, MIB, CU_MEM_ATTACH_GLOBAL));
    say("cuMemAllocAsync", cuMemAllocAsync(&p, MIB, NULL));
    say("cuMemFree_v2", cuMemFree_v2(0x1000));
    say("cuMemGetInfo_v2", cuMemGetInfo_v2(&f, &t));
    say("cuDeviceTotalMem_v2", cuDeviceTotalMem_v2(&t, 0));
    say("cuLaunchKernel", cuLaunchKernel((CUfunction)(uintptr_t)1, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemGenericAllocationHandle h;
    say("cuMemCreate", cuMemCreate(&h, 2 * MIB, &prop, 0));
    CUDA_ARRAY_DESCRIPTOR d = {.Width = 16, .Height = 16, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
    CUarray a;
    say("cuArrayCreate_v2", cuArrayCreate_v2(&a, &d));
    return 0;
}
