/* fork (shim-contract.md 2.7), driven by pytest.
 *
 * `forked alloc|launch`: the parent allocates 64 MiB on device 0 and forks. The child allocates
 * 32 MiB (`alloc`; it also frees the parent's pointer, which is not its own: passed through) or
 * only launches a kernel (`launch`), prints child.* lines, tells the parent and waits on a pipe:
 * 'x' = exit normally; end of file (the parent died) = print hold=orphan, wait for a line on
 * stdin, exit. The parent prints parent.pid and holds (hold=forked); after the next line on stdin
 * it sends 'x' (ignored if the child is gone), reaps the child, prints child_status (exit code, or
 * minus the signal number) and holds (hold=reaped).
 *
 * `forked lock attach|ctx|pool`: a second thread of the parent is stopped inside the stand-in
 * driver while it holds a lock of the shim (attach: the region attach of its first cuInit; ctx:
 * the context-measurement lock of cuCtxCreate_v2 on device 1; pool: the pool lock of
 * cuMemAllocAsync), and the main thread forks. The child, with a 20 s alarm, repeats the same
 * call, allocates and frees 1 MiB and exits; the parent releases the other thread and prints
 * child_status (-14 = the child hung and SIGALRM killed it) and child_ok.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "snippet.h"

typedef void (*stall_arm_fn)(const char *);
typedef int (*stalled_fn)(void);
typedef void (*stall_release_fn)(void);

static int status_of(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st); }

static CUresult op(const char *what)
{
    if (!strcmp(what, "attach"))
        return cuInit(0);
    if (!strcmp(what, "ctx")) {
        CUcontext c;
        CUresult r = cuCtxCreate_v2(&c, 0, 1);
        if (r == CUDA_SUCCESS) {
            CUcontext popped;
            cuCtxPopCurrent_v2(&popped);
        }
        return r;
    }
    CUdeviceptr p;
    CUresult r = cuMemAllocAsync(&p, 32 * MIB, NULL);
    return r == CUDA_SUCCESS ? cuMemFreeAsync(p, NULL) : r;
}

static CUcontext primary;

static void *other_thread(void *arg)
{
    if (primary)
        cuCtxSetCurrent(primary);
    say("thread.rc", op(arg));
    return NULL;
}

static int lock_case(const char *what)
{
    if (strcmp(what, "attach"))
        primary = setup(0);
    const char *point = !strcmp(what, "attach") ? "nvmlDeviceGetCount_v2"
                        : !strcmp(what, "ctx")  ? "cuCtxCreate_v2"
                                                : "cuMemPoolGetAttribute";
    ((stall_arm_fn)(uintptr_t)fake_fn("fakegpu_stall_arm"))(point);
    pthread_t t;
    if (pthread_create(&t, NULL, other_thread, (void *)what) != 0)
        DIE("pthread_create");
    stalled_fn stalled = (stalled_fn)(uintptr_t)fake_fn("fakegpu_stalled");
    for (int i = 0; !stalled(); i++) {
        if (i > 20000)
            DIE("the other thread never reached %s", point);
        usleep(1000);
    }
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        DIE("fork");
    if (child == 0) {
        alarm(20);
        if (!strcmp(what, "attach"))
            MUST(cuInit(0));
        else
            MUST(op(what));
        if (!strcmp(what, "attach"))
            setup(0);
        CUdeviceptr p;
        MUST(cuMemAlloc_v2(&p, MIB));
        MUST(cuMemFree_v2(p));
        exit(0); /* the destructor releases the child's slot */
    }
    ((stall_release_fn)(uintptr_t)fake_fn("fakegpu_stall_release"))();
    pthread_join(t, NULL);
    int st = 0;
    waitpid(child, &st, 0);
    say("child_status", status_of(st));
    say("child_ok", WIFEXITED(st) && WEXITSTATUS(st) == 0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        DIE("usage: forked alloc|launch | forked lock attach|ctx|pool");
    if (!strcmp(argv[1], "lock"))
        return lock_case(argc > 2 ? argv[2] : "ctx");
    int child_alloc = !strcmp(argv[1], "alloc");
    signal(SIGPIPE, SIG_IGN);
    setup(0);
    CUdeviceptr mine;
    MUST(cuMemAlloc_v2(&mine, 64 * MIB));
    int ready[2], cmd[2];
    if (pipe(ready) || pipe(cmd))
        DIE("pipe");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        DIE("fork");
    if (child == 0) {
        close(ready[0]);
        close(cmd[1]);
        say("child.pid", getpid());
        if (child_alloc) {
            CUdeviceptr p;
            say("child.alloc_rc", cuMemAlloc_v2(&p, 32 * MIB));
            /* the parent's allocation is not the child's: passed through, nobody uncharged */
            say("child.free_parent_rc", cuMemFree_v2(mine));
        } else {
            say("child.launch_rc", cuLaunchKernel((CUfunction)(uintptr_t)1, 1, 1, 1, 32, 1, 1, 0,
                                                  NULL, NULL, NULL));
        }
        char c = 'r';
        if (write(ready[1], &c, 1) != 1)
            _exit(4);
        if (read(cmd[0], &c, 1) == 1)
            exit(0); /* normal exit: the destructor releases the slot */
        hold("orphan");
        exit(0);
    }
    close(ready[1]);
    close(cmd[0]);
    char c;
    if (read(ready[0], &c, 1) != 1)
        DIE("the child died before it was ready");
    say("parent.pid", getpid());
    hold("forked");
    c = 'x';
    if (write(cmd[1], &c, 1) != 1) {
        /* the child is gone (killed by the test) */
    }
    int st = 0;
    waitpid(child, &st, 0);
    say("child_status", status_of(st));
    hold("reaped");
    MUST(cuMemFree_v2(mine));
    return 0;
}
