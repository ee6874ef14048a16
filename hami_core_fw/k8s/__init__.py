"""k8s package (see ARCHITECTURE.md section 3)."""
