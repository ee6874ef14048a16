/* Limit parsing (see limits.h). */
#include "limits.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int hami_parse_bytes(const char *s, uint64_t *out)
{
    if (!s)
        return HAMI_PARSE_UNSET;
    uint64_t v = 0;
    const char *p = s;
    if (*p == '\0') {
        *out = 0;
        return HAMI_PARSE_OK;
    }
    if (*p < '0' || *p > '9')
        return HAMI_PARSE_INVALID;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return HAMI_PARSE_INVALID;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    unsigned shift = 0;
    if (*p) {
        switch (*p) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        case 't': case 'T': shift = 40; break;
        default: return HAMI_PARSE_INVALID;
        }
        p++;
        if (*p == 'i')
            p++;
        if (*p)
            return HAMI_PARSE_INVALID;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return HAMI_PARSE_INVALID;
    *out = v << shift;
    return HAMI_PARSE_OK;
}

int hami_parse_percent(const char *s, uint64_t *out)
{
    if (!s)
        return HAMI_PARSE_UNSET;
    if (*s == '\0') {
        *out = 0;
        return HAMI_PARSE_OK;
    }
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > 1000)
            return HAMI_PARSE_INVALID;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > 100)
        return HAMI_PARSE_INVALID;
    *out = v;
    return HAMI_PARSE_OK;
}

static int env_indexed(const char *base, int index, uint64_t *out, char *used, int len,
                       int (*parse)(const char *, uint64_t *))
{
    char name[96];
    snprintf(name, sizeof(name), "%s_%d", base, index);
    const char *v = getenv(name);
    if (!v) {
        snprintf(name, sizeof(name), "%s", base);
        v = getenv(name);
    }
    if (used && len > 0)
        snprintf(used, (size_t)len, "%s", name);
    return v ? parse(v, out) : HAMI_PARSE_UNSET;
}

int hami_env_bytes(const char *base, int index, uint64_t *out, char *used, int len)
{
    return env_indexed(base, index, out, used, len, hami_parse_bytes);
}

int hami_env_percent(const char *base, int index, uint64_t *out, char *used, int len)
{
    return env_indexed(base, index, out, used, len, hami_parse_percent);
}

int hami_env_true(const char *name)
{
    const char *v = getenv(name);
    return v && (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
                 !strcasecmp(v, "on"));
}
