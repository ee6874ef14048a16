/* Parsing of the limit environment variables (shim-contract.md 4). Pure functions. */
#ifndef HAMI_LIMITS_H
#define HAMI_LIMITS_H

#include <stdint.h>

enum hami_parse { HAMI_PARSE_OK = 0, HAMI_PARSE_UNSET = 1, HAMI_PARSE_INVALID = -1 };

/* Byte size: decimal digits with an optional binary suffix k/K m/M g/G t/T or Ki/Mi/Gi/Ti.
 * Empty or "0" = 0 (unlimited). Anything else (hex, fractions, signs, overflow) is invalid. */
int hami_parse_bytes(const char *s, uint64_t *out);
/* Percent: decimal integer 0..100; > 100 or malformed is invalid. */
int hami_parse_percent(const char *s, uint64_t *out);

/* Reads `<base>_<index>`, else `<base>`; reports which variable was used in `used_name`.
 * Returns HAMI_PARSE_UNSET when neither is set. */
int hami_env_bytes(const char *base, int index, uint64_t *out, char *used_name, int len);
int hami_env_percent(const char *base, int index, uint64_t *out, char *used_name, int len);

/* Case-insensitive truth of an environment flag ("1", "true", "yes", "on"). */
int hami_env_true(const char *name);

#endif
