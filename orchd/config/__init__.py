"""Configuration: /etc/orchd/orchd.toml and deployments.d/*.toml, validated into typed objects."""

from orchd.config.load import default_config_path, load_config
from orchd.config.model import (
    Config,
    DatabaseConfig,
    DeploymentConfig,
    LoggingConfig,
    PoolConfig,
    SchedulerConfig,
    WorkerConfig,
)

__all__ = [
    "Config",
    "DatabaseConfig",
    "DeploymentConfig",
    "LoggingConfig",
    "PoolConfig",
    "SchedulerConfig",
    "WorkerConfig",
    "default_config_path",
    "load_config",
]
