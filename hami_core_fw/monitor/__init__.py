"""monitor package (see ARCHITECTURE.md section 3)."""
