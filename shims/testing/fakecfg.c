/* Parser of the stand-in driver's device table. See fakecfg.h and shims/README.md. */
#include "fakecfg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int fakecfg_parse_uuid(const char *s, unsigned char raw[16])
{
    if (strncmp(s, "GPU-", 4) == 0)
        s += 4;
    int n = 0;
    for (; *s && n < 32; s++) {
        if (*s == '-')
            continue;
        int v = hexval((unsigned char)*s);
        if (v < 0)
            return -1;
        if (n % 2 == 0)
            raw[n / 2] = (unsigned char)(v << 4);
        else
            raw[n / 2] |= (unsigned char)v;
        n++;
    }
    return n == 32 ? 0 : -1;
}

static void set_default_device(struct fake_device *d, int i)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->uuid, sizeof(d->uuid), "GPU-8f3a89c6-0000-4000-8000-%012x", i + 1);
    fakecfg_parse_uuid(d->uuid, d->raw);
    snprintf(d->name, sizeof(d->name), "NVIDIA Fake GPU");
    d->memory_bytes = 16384ull << 20;
    d->sms = 80;
    d->threads_per_sm = 2048;
    d->pci_bus = (unsigned)(0x10 + i);
    d->minor = i;
    d->mig = -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Next whitespace-separated token; "..." quotes allowed in values (key="a b"). */
static char *next_token(char **p)
{
    char *s = *p;
    while (isspace((unsigned char)*s))
        s++;
    if (!*s)
        return NULL;
    char *out = s, *w = s;
    int quoted = 0;
    while (*s && (quoted || !isspace((unsigned char)*s))) {
        if (*s == '"') {
            quoted = !quoted;
            s++;
            continue;
        }
        *w++ = *s++;
    }
    if (*s)
        s++;
    *w = '\0';
    *p = s;
    return out;
}

static int find_device(const struct fake_config *cfg, const char *uuid)
{
    for (int i = 0; i < cfg->ndev; i++)
        if (strcasecmp(cfg->dev[i].uuid, uuid) == 0)
            return i;
    return -1;
}

static void bad(const char *line)
{
    fprintf(stderr, "[fakegpu] ignoring malformed config line: %s\n", line);
}

static void parse_device(struct fake_config *cfg, char *rest, const char *line)
{
    if (cfg->ndev >= FAKE_MAX_DEVICES) {
        bad(line);
        return;
    }
    struct fake_device *d = &cfg->dev[cfg->ndev];
    set_default_device(d, cfg->ndev);
    char *tok = next_token(&rest);
    if (!tok || fakecfg_parse_uuid(tok, d->raw) != 0) {
        bad(line);
        return;
    }
    snprintf(d->uuid, sizeof(d->uuid), "%s", tok);
    while ((tok = next_token(&rest))) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            bad(line);
            continue;
        }
        *eq = '\0';
        const char *k = tok, *v = eq + 1;
        if (!strcmp(k, "name"))
            snprintf(d->name, sizeof(d->name), "%s", v);
        else if (!strcmp(k, "memory_mib"))
            d->memory_bytes = strtoull(v, NULL, 10) << 20;
        else if (!strcmp(k, "memory_bytes"))
            d->memory_bytes = strtoull(v, NULL, 10);
        else if (!strcmp(k, "sms"))
            d->sms = atoi(v);
        else if (!strcmp(k, "threads_per_sm"))
            d->threads_per_sm = atoi(v);
        else if (!strcmp(k, "numa"))
            d->numa = atoi(v);
        else if (!strcmp(k, "minor"))
            d->minor = atoi(v);
        else if (!strcmp(k, "mig"))
            d->mig = !strcmp(v, "enabled") ? 1 : !strcmp(v, "disabled") ? 0 : -1;
        else if (!strcmp(k, "pci")) {
            unsigned dom = 0, bus = 0, dv = 0, fn = 0;
            if (sscanf(v, "%x:%x:%x.%x", &dom, &bus, &dv, &fn) == 4) {
                d->pci_domain = dom;
                d->pci_bus = bus;
                d->pci_dev = dv;
            } else {
                bad(line);
            }
        } else {
            bad(line);
        }
    }
    cfg->ndev++;
}

static void parse_line(struct fake_config *cfg, char *line, int xids_only)
{
    char *hash = strchr(line, '#');
    if (hash)
        *hash = '\0';
    char *s = trim(line);
    if (!*s)
        return;
    char copy[512];
    snprintf(copy, sizeof(copy), "%s", s);
    if (!strncmp(s, "device ", 7) || !strncmp(s, "device\t", 7)) {
        if (!xids_only)
            parse_device(cfg, s + 7, copy);
        return;
    }
    if (!strncmp(s, "xid ", 4)) {
        char *rest = s + 4;
        char *uuid = next_token(&rest), *code = next_token(&rest);
        int dev = uuid ? find_device(cfg, uuid) : -1;
        if (dev < 0 || !code || cfg->nxid >= FAKE_MAX_XIDS) {
            bad(copy);
            return;
        }
        cfg->xid[cfg->nxid].device = dev;
        cfg->xid[cfg->nxid].code = strtoull(code, NULL, 10);
        cfg->nxid++;
        return;
    }
    if (xids_only)
        return;
    char *eq = strchr(s, '=');
    if (!eq) {
        bad(copy);
        return;
    }
    *eq = '\0';
    char *k = trim(s), *v = trim(eq + 1);
    if (*v == '"') {
        v++;
        char *q = strchr(v, '"');
        if (q)
            *q = '\0';
    }
    if (!strcmp(k, "driver_version"))
        cfg->driver_version = atoi(v);
    else if (!strcmp(k, "nvml_driver_version"))
        snprintf(cfg->nvml_driver_version, sizeof(cfg->nvml_driver_version), "%s", v);
    else if (!strcmp(k, "granularity_mib"))
        cfg->granularity = strtoull(v, NULL, 10) << 20;
    else if (!strcmp(k, "external_used_mib"))
        cfg->external_used = strtoull(v, NULL, 10) << 20;
    else if (!strcmp(k, "context_mib"))
        cfg->context_bytes = strtoull(v, NULL, 10) << 20;
    else if (!strcmp(k, "module_kib"))
        cfg->module_bytes = strtoull(v, NULL, 10) << 10;
    else if (!strcmp(k, "host_pid_offset"))
        cfg->host_pid_offset = atoi(v);
    else if (!strcmp(k, "cuda_order"))
        cfg->cuda_reverse = !strcmp(v, "reverse");
    else if (!strcmp(k, "fail_alloc_after"))
        cfg->fail_alloc_after = strtol(v, NULL, 10);
    else if (!strcmp(k, "backing"))
        cfg->backing_none = !strcmp(v, "none");
    else if (!strcmp(k, "process_util_samples"))
        cfg->old_util_api_empty = !strcmp(v, "none");
    else if (!strcmp(k, "processes_util_info"))
        cfg->new_util_api_missing = !strcmp(v, "unsupported");
    else if (!strcmp(k, "thread_ns"))
        cfg->thread_ns = strtod(v, NULL);
    else if (!strcmp(k, "launch_queue_us"))
        cfg->launch_queue_ns = strtoull(v, NULL, 10) * 1000;
    else
        bad(copy);
}

static void parse_text(struct fake_config *cfg, char *text, int xids_only)
{
    char *save = NULL;
    for (char *line = strtok_r(text, ";\n", &save); line; line = strtok_r(NULL, ";\n", &save))
        parse_line(cfg, line, xids_only);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

void fakecfg_load(struct fake_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->driver_version = 13040;
    snprintf(cfg->nvml_driver_version, sizeof(cfg->nvml_driver_version), "590.48.01");
    cfg->granularity = 2ull << 20;
    cfg->context_bytes = 0;
    cfg->module_bytes = 0;
    cfg->fail_alloc_after = -1;
    cfg->thread_ns = 1.0;
    cfg->launch_queue_ns = 1000000;
    const char *env = getenv("HAMI_FAKE_GPU_CONFIG");
    char *text = NULL;
    if (env && *env) {
        if (env[0] == '/' || env[0] == '.') {
            snprintf(cfg->path, sizeof(cfg->path), "%s", env);
            text = read_file(env);
            if (!text)
                fprintf(stderr, "[fakegpu] cannot read HAMI_FAKE_GPU_CONFIG=%s\n", env);
        } else {
            text = strdup(env);
        }
    }
    if (text) {
        parse_text(cfg, text, 0);
        free(text);
    }
    if (cfg->ndev == 0) {
        cfg->ndev = 1;
        set_default_device(&cfg->dev[0], 0);
    }
}

int fakecfg_reload_xids(struct fake_config *cfg)
{
    if (!cfg->path[0])
        return cfg->nxid;
    char *text = read_file(cfg->path);
    if (!text)
        return cfg->nxid;
    cfg->nxid = 0;
    parse_text(cfg, text, 1);
    free(text);
    return cfg->nxid;
}
