"""Write a gateway YAML config that points at the fake DingTalk and the fake OpenAI server.

Used by tests and benchmarks that run ``edgecrab --config ... gateway start`` as a subprocess. Credentials
stay ``${ENV}`` references, as in a real deployment; the caller puts the values in the child's environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_gateway_config(
    path: Path,
    *,
    api_base: str,
    llm_base_url: str,
    llm_key_var: str = "FAKE_LLM_KEY",
    model: str = "fake-model",
    dingtalk: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
    sessions: dict[str, Any] | None = None,
    media: dict[str, Any] | None = None,
) -> Path:
    """Write the config to ``path`` (state in ``state.db`` beside it) and return ``path``."""
    config: dict[str, Any] = {
        "platforms": {
            "dingtalk": {
                "app_key": "${DINGTALK_APP_KEY}",
                "app_secret": "${DINGTALK_APP_SECRET}",
                "api_base": api_base,
                **(dingtalk or {}),
            }
        },
        "agent": {
            "type": "openai",
            "base_url": llm_base_url,
            "model": model,
            "api_key": "${" + llm_key_var + "}",
            **(agent or {}),
        },
        "sessions": dict(sessions or {}),
        "storage": {"url": f"sqlite:///{path.parent / 'state.db'}"},
    }
    if media:
        config["media"] = dict(media)
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
