"""Generated gRPC modules of the kubelet device plugin API v1beta1 (see generate.py)."""
