"""warden-provision."""
