/* Logging of the shims: one prefix, stderr only, level read once from LIBCUDA_LOG_LEVEL.
 *
 * Levels (shim-contract.md 4): 0 errors, 1 + warnings (default), 2 + notices, 3 info, 4 debug.
 * Nothing is printed at the default level unless something is wrong. errno is preserved.
 */
#ifndef HAMI_LOG_H
#define HAMI_LOG_H

enum { HAMI_LOG_ERROR = 0, HAMI_LOG_WARN = 1, HAMI_LOG_NOTICE = 2, HAMI_LOG_INFO = 3, HAMI_LOG_DEBUG = 4 };

extern int hami_log_level;

void hami_log_init(void);
void hami_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define HAMI_LOG(level, ...)                        \
    do {                                            \
        if ((level) <= hami_log_level)              \
            hami_log_write((level), __VA_ARGS__);   \
    } while (0)

#define LOG_ERROR(...) HAMI_LOG(HAMI_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) HAMI_LOG(HAMI_LOG_WARN, __VA_ARGS__)
#define LOG_NOTICE(...) HAMI_LOG(HAMI_LOG_NOTICE, __VA_ARGS__)
#define LOG_INFO(...) HAMI_LOG(HAMI_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) HAMI_LOG(HAMI_LOG_DEBUG, __VA_ARGS__)

#endif
