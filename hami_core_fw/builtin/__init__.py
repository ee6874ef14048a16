"""Default plugins shipped with the core; each imports only what a third-party plugin may."""
