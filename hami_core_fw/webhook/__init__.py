"""webhook package (see ARCHITECTURE.md section 3)."""
