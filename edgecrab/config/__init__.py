"""Configuration: YAML -> ``${ENV}`` references -> JSON Schema validation -> frozen dataclasses.

Reading order: :mod:`~edgecrab.config.source` parses the YAML (keeping line numbers) and expands ``${VAR}``;
:mod:`~edgecrab.config.check` validates against ``schemas/config.schema.json`` and words each problem with
its key path, line and fix; :mod:`~edgecrab.config.load` builds the frozen dataclasses of
:mod:`~edgecrab.config.model`, which the rest of the gateway reads; :mod:`~edgecrab.config.redact` shows them
with secrets hidden. The names below are the package's public face: import them from ``edgecrab.config``.
"""

from edgecrab.config.load import (
    BUILTIN_COMMANDS,
    BUILTIN_SOURCE,
    SANDBOX_APP_KEY,
    SANDBOX_APP_SECRET,
    load_config,
    load_schema,
)
from edgecrab.config.model import (
    AgentConfig,
    CommandsConfig,
    Config,
    DingTalkConfig,
    HooksConfig,
    HttpConfig,
    MediaConfig,
    SessionsConfig,
    StorageConfig,
)
from edgecrab.config.redact import REDACTED, config_to_dict, is_secret_key, redacted_dict, secret_values

__all__ = [
    "BUILTIN_COMMANDS",
    "BUILTIN_SOURCE",
    "REDACTED",
    "SANDBOX_APP_KEY",
    "SANDBOX_APP_SECRET",
    "AgentConfig",
    "CommandsConfig",
    "Config",
    "DingTalkConfig",
    "HooksConfig",
    "HttpConfig",
    "MediaConfig",
    "SessionsConfig",
    "StorageConfig",
    "config_to_dict",
    "is_secret_key",
    "load_config",
    "load_schema",
    "redacted_dict",
    "secret_values",
]
