"""Helpers for the tests that need a real systemd (a throwaway systemd-nspawn container) or the .deb."""
