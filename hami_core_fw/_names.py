"""Every wire string the core shares with HAMi or with operators, defined in one place.

Annotation keys, label keys, environment variable names and the entry-point group live here so that
no module scatters HAMi's literals (style.md 6). Vendor-specific keys live in each vendor module.
"""

from __future__ import annotations

from typing import Final

PROJECT_NAME: Final = "hami"
DISTRIBUTION: Final = "hami-core-fw"
ENTRYPOINT_GROUP: Final = "hami"

# --- scheduler decision, written on pods (hami-compat.md 3.3) ---------------------------------
ANNOTATION_VGPU_NODE: Final = "hami.io/vgpu-node"
LABEL_VGPU_NODE: Final = "hami.io/vgpu-node"
ANNOTATION_VGPU_TIME: Final = "hami.io/vgpu-time"
ANNOTATION_BIND_PHASE: Final = "hami.io/bind-phase"
ANNOTATION_BIND_TIME: Final = "hami.io/bind-time"
BIND_PHASE_ALLOCATING: Final = "allocating"
BIND_PHASE_SUCCESS: Final = "success"
BIND_PHASE_FAILED: Final = "failed"

# --- user-set pod annotations read by the scheduler ------------------------------------------
ANNOTATION_NODE_POLICY: Final = "hami.io/node-scheduler-policy"
ANNOTATION_GPU_POLICY: Final = "hami.io/gpu-scheduler-policy"
ANNOTATION_SCORING_WEIGHTS: Final = "hami.io/device-scoring-weights"

# --- node annotations -------------------------------------------------------------------------
ANNOTATION_NODE_LOCK: Final = "hami.io/mutex.lock"
ANNOTATION_DEVICE_CORDON: Final = "hami.io/device-cordon"
HANDSHAKE_REQUESTING: Final = "Requesting"
HANDSHAKE_REPORTED: Final = "Reported"
HANDSHAKE_DELETED: Final = "Deleted"

# --- labels -------------------------------------------------------------------------------------
LABEL_WEBHOOK_IGNORE: Final = "hami.io/webhook"
LABEL_SCHEDULER_ROLE: Final = "hami.io/scheduler-role"
POD_GROUP_LABEL: Final = "scheduling.x-k8s.io/pod-group"

# --- defaults -------------------------------------------------------------------------------------
DEFAULT_SCHEDULER_NAME: Final = "hami-scheduler"
KUBE_DEFAULT_SCHEDULER: Final = "default-scheduler"
NODE_LOCK_EXPIRY_SECONDS: Final = 300
HANDSHAKE_TIMEOUT_SECONDS: Final = 60

# --- environment variables of the shim contract (shim-contract.md 4) --------------------------
ENV_MEMORY_LIMIT: Final = "CUDA_DEVICE_MEMORY_LIMIT"
ENV_SM_LIMIT: Final = "CUDA_DEVICE_SM_LIMIT"
ENV_SHARED_CACHE: Final = "CUDA_DEVICE_MEMORY_SHARED_CACHE"
ENV_OVERSUBSCRIBE: Final = "CUDA_OVERSUBSCRIBE"
ENV_LOG_LEVEL: Final = "LIBCUDA_LOG_LEVEL"
ENV_CORE_POLICY: Final = "GPU_CORE_UTILIZATION_POLICY"
ENV_TASK_PRIORITY: Final = "CUDA_TASK_PRIORITY"
ENV_DISABLE_CONTROL: Final = "CUDA_DISABLE_CONTROL"

# --- our own process environment (style.md 3) ---------------------------------------------------
ENV_PLUGINS: Final = "HAMI_PLUGINS"
ENV_DISABLED_PLUGINS: Final = "HAMI_DISABLED_PLUGINS"
ENV_DISABLE_AUTOLOAD: Final = "HAMI_DISABLE_PLUGIN_AUTOLOAD"
ENV_TRACE_PLUGINS: Final = "HAMI_TRACE_PLUGINS"
