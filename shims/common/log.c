/* Log sink of the shims (see log.h). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int hami_log_level = HAMI_LOG_WARN;

void hami_log_init(void)
{
    const char *v = getenv("LIBCUDA_LOG_LEVEL");
    if (v && *v >= '0' && *v <= '9' && v[1] == '\0')
        hami_log_level = *v - '0';
}

void hami_log_write(int level, const char *fmt, ...)
{
    static const char *const names[] = {"ERROR", "WARN", "NOTICE", "INFO", "DEBUG"};
    int saved = errno;
    char buf[1024];
    int n = snprintf(buf, sizeof(buf), "[hami-shim %d:%ld] %s: ", (int)getpid(),
                     (long)syscall(SYS_gettid), names[level < 0 ? 0 : level > 4 ? 4 : level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(buf))
        n += vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(buf) - 1)
        n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    /* One write(2) per line so lines of concurrent processes do not interleave. */
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w;
    errno = saved;
}
