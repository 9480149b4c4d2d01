"""orchd: a self-hosted, systemd-native workflow scheduler."""

__version__ = "0.1.0"
