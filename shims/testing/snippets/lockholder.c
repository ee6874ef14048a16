/* Dies holding a device lock of the region in the middle of an update: registers through the shim
 * (one 1 MiB allocation on device 0), then locks device 0's mutex in the shared file, adds 12345
 * to the container counter without a matching slot update, and SIGKILLs itself. */
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "region.h"
#include "snippet.h"

int main(void)
{
    setup(0);
    CUdeviceptr p;
    MUST(cuMemAlloc_v2(&p, MIB));
    int fd = open(getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE"), O_RDWR);
    if (fd < 0)
        DIE("open region");
    char *base = mmap(NULL, HAMI_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        DIE("mmap region");
    struct hami_ext *ext = (struct hami_ext *)(base + HAMI_EXT_OFFSET);
    if (pthread_mutex_lock(&ext->dev[0].lock.m) != 0)
        DIE("lock");
    atomic_fetch_add(&ext->dev[0].reserved, 12345);
    say("locked", 1);
    raise(SIGKILL);
    return 0;
}
