/* Device table of the stand-in driver libraries (shim-contract.md 12.1).
 *
 * Both libcuda.so.1 and libnvidia-ml.so.1 parse HAMI_FAKE_GPU_CONFIG (a file path, or an inline
 * table whose lines are separated by ';' or newlines) into this structure. Format: shims/README.md.
 */
#ifndef HAMI_FAKECFG_H
#define HAMI_FAKECFG_H

#include <stddef.h>
#include <stdint.h>

#define FAKE_MAX_DEVICES 16
#define FAKE_MAX_XIDS 64

struct fake_device {
    char uuid[96];          /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
    unsigned char raw[16];  /* the same UUID as 16 bytes (cuDeviceGetUuid) */
    char name[96];
    uint64_t memory_bytes;
    int sms;
    int threads_per_sm;
    unsigned pci_domain, pci_bus, pci_dev;
    int numa;
    int minor;
    int mig; /* -1 not supported, 0 disabled, 1 enabled */
};

struct fake_xid {
    int device; /* table index */
    unsigned long long code;
};

struct fake_config {
    int driver_version;
    char nvml_driver_version[80];
    int ndev;
    struct fake_device dev[FAKE_MAX_DEVICES];
    uint64_t granularity;      /* VMM allocation granularity, bytes */
    uint64_t external_used;    /* memory used by "other tenants", per device */
    uint64_t context_bytes;    /* device memory a context consumes */
    uint64_t module_bytes;     /* device memory a loaded module or library consumes */
    int host_pid_offset;
    int cuda_reverse;          /* cuda_order = reverse */
    long fail_alloc_after;     /* fail the Nth allocation (1-based), -1 = never */
    int backing_none;          /* backing = none: device addresses without host memory */
    int old_util_api_empty;    /* process_util_samples = none (Blackwell behaviour) */
    int new_util_api_missing;  /* processes_util_info = unsupported (pre-R550 drivers) */
    double thread_ns;          /* virtual clock: device ns of one thread of one block (/ SMs) */
    uint64_t launch_queue_ns;  /* a launch blocks while more device time than this is queued */
    int nxid;
    struct fake_xid xid[FAKE_MAX_XIDS];
    char path[512];            /* file the table came from ("" when inline or default) */
};

/* Parses the table; on error prints one line to stderr and keeps the defaults for that line. */
void fakecfg_load(struct fake_config *cfg);
/* Re-reads only the xid lines of the config file (for event polling); returns the count. */
int fakecfg_reload_xids(struct fake_config *cfg);
int fakecfg_parse_uuid(const char *s, unsigned char raw[16]);

#endif
