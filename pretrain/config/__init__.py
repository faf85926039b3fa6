"""Typed configuration: schema (defaults in code) and loading (YAML + dotted overrides)."""

from pretrain.config.load import ConfigError, config_to_yaml, flatten, load_config
from pretrain.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "config_to_yaml", "flatten", "load_config"]
