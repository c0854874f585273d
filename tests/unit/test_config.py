"""Configuration loading: ${VAR} references, defaults, normalisation, error reports, schema and redaction."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edgecrab.config import (
    SANDBOX_APP_KEY,
    SANDBOX_APP_SECRET,
    AgentConfig,
    CommandsConfig,
    DingTalkConfig,
    HooksConfig,
    HttpConfig,
    SessionsConfig,
    StorageConfig,
    config_to_dict,
    load_config,
    load_schema,
    redacted_dict,
)
from edgecrab.config.model import CardConfig
from edgecrab.errors import ConfigError, HookLoadError, Problem

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "data" / "configs"
CREDS = {"DINGTALK_APP_KEY": "dingkey0001", "DINGTALK_APP_SECRET": "s3cret-value-0001"}
MINIMAL = "platforms:\n  dingtalk:\n    app_key: dingkey0001\n    app_secret: s3cret-value-0001\n"


def write(directory: Path, text: str, name: str = "edgecrab.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return load_config(write(tmp_path, text), env=dict(env or {}), **kwargs)


def problems_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, env)
    return caught.value.problems


# --- ${VAR} references ----------------------------------------------------------------------------------


def test_env_reference_is_replaced(tmp_path: Path) -> None:
    text = (
        "platforms:\n  dingtalk:\n    app_key: ${DINGTALK_APP_KEY}\n    app_secret: ${DINGTALK_APP_SECRET}\n"
    )
    config = load_text(tmp_path, text, CREDS)
    assert config.dingtalk.app_key == "dingkey0001"
    assert config.dingtalk.app_secret == "s3cret-value-0001"


@pytest.mark.parametrize("env", [{}, {"ROBOT": ""}], ids=["unset", "empty"])
def test_default_is_used_when_variable_unset_or_empty(tmp_path: Path, env: dict[str, str]) -> None:
    config = load_text(tmp_path, MINIMAL + "    robot_code: ${ROBOT:-robot-from-default}\n", env)
    assert config.dingtalk.robot_code == "robot-from-default"


def test_set_variable_beats_default(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL + "    robot_code: ${ROBOT:-fallback}\n", {"ROBOT": "robot-7"})
    assert config.dingtalk.robot_code == "robot-7"


def test_references_inside_longer_strings_and_lists(tmp_path: Path) -> None:
    text = MINIMAL + (
        "agent:\n  system_prompt: 'Hi ${WHO}, from ${PLACE:-nowhere} (${WHO})'\n"
        "  type: command\n  command: [run, '--team=${TEAM:-ops}', '${WHO}']\n"
    )
    config = load_text(tmp_path, text, {"WHO": "Ann"})
    assert config.agent.system_prompt == "Hi Ann, from nowhere (Ann)"
    assert config.agent.command == ("run", "--team=ops", "Ann")


def test_double_dollar_writes_a_literal_reference(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL + "agent:\n  system_prompt: 'cost: $${PRICE} and ${X:-y}'\n")
    assert config.agent.system_prompt == "cost: ${PRICE} and y"


def test_missing_variable_names_variable_key_path_and_line(tmp_path: Path) -> None:
    text = MINIMAL + "agent:\n  type: echo\n  api_key: ${NOT_SET_ANYWHERE}\n"
    [problem] = problems_of(tmp_path, text)
    assert problem.path == "agent.api_key"
    assert problem.line == 7
    assert "NOT_SET_ANYWHERE" in problem.message
    assert "${NOT_SET_ANYWHERE:-default}" in problem.hint


def test_variable_set_but_empty_without_default_gives_empty_string(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL + "    robot_code: ${ROBOT}\n", {"ROBOT": ""})
    assert config.dingtalk.robot_code == "dingkey0001"  # empty robot_code falls back to app_key


def test_values_from_env_are_converted_to_the_schema_type(tmp_path: Path) -> None:
    text = MINIMAL + (
        "    require_mention: ${MENTION}\n    openapi_qps: ${QPS}\n    max_message_length: ${LEN}\n"
        "agent:\n  temperature: ${TEMP:-}\nhttp:\n  port: ${PORT:-0}\n"
    )
    config = load_text(tmp_path, text, {"MENTION": "False", "QPS": "2.5", "LEN": " 3500 ", "PORT": "8080"})
    assert config.dingtalk.require_mention is False
    assert config.dingtalk.openapi_qps == 2.5
    assert config.dingtalk.max_message_length == 3500
    assert config.agent.temperature is None
    assert config.http.port == 8080 and isinstance(config.http.port, int)


def test_card_section_is_read_into_its_dataclass(tmp_path: Path) -> None:
    text = MINIMAL + (
        "    reply_mode: card\n    card:\n      update_interval_ms: ${INTERVAL}\n      qps: 5\n"
        "      content_key: content\n"
    )
    config = load_text(tmp_path, text, {"INTERVAL": "400"})
    assert config.dingtalk.reply_mode == "card"
    card = config.dingtalk.card
    assert isinstance(card, CardConfig)
    assert (card.update_interval_ms, card.qps, card.content_key) == (400, 5, "content")
    assert card.template_id == "02fcf2f4-5e02-4a85-b672-46d1f715543e.schema" and card.max_chars == 20000
    assert load_config(None, env=CREDS).dingtalk.card == CardConfig()


def test_card_section_problems_name_the_nested_key(tmp_path: Path) -> None:
    text = MINIMAL + "    reply_mode: cards\n    card:\n      update_interval_ms: 10\n      colour: red\n"
    assert [p.path for p in problems_of(tmp_path, text)] == [
        "platforms.dingtalk.reply_mode",
        "platforms.dingtalk.card.update_interval_ms",
        "platforms.dingtalk.card.colour",
    ]


def test_env_value_that_is_not_a_number_is_reported_with_its_reference(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, MINIMAL + "http:\n  port: ${PORT}\n", {"PORT": "eighty"})
    assert problem.path == "http.port"
    assert problem.message == 'expected a whole number, got string "eighty" (from `${PORT}`)'


def test_string_keys_stay_strings_even_when_they_look_like_numbers(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL + "agent:\n  system_prompt: ${PROMPT}\n", {"PROMPT": "42"})
    assert config.agent.system_prompt == "42"


# --- defaults and normalisation -------------------------------------------------------------------------


def test_minimal_config_takes_every_default(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    expected = DingTalkConfig(app_key="dingkey0001", app_secret="s3cret-value-0001", robot_code="dingkey0001")
    assert config.dingtalk == expected
    assert config.agent == AgentConfig()
    assert config.sessions == SessionsConfig()
    assert config.commands == CommandsConfig()
    assert config.hooks == HooksConfig()  # no hooks/ folder beside the file
    assert config.http == HttpConfig()
    assert config.storage.url == "sqlite:///~/.edgecrab/state.db"
    assert config.source == tmp_path / "edgecrab.yaml"


def test_edgecrab_home_moves_the_default_store(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL, {"EDGECRAB_HOME": "/srv/crab/"})
    assert config.storage.url == "sqlite:////srv/crab/state.db"
    assert config.storage.sqlite_path == Path("/srv/crab/state.db")


def test_explicit_storage_url_wins_over_edgecrab_home(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, MINIMAL + "storage:\n  url: 'sqlite:///:memory:'\n", {"EDGECRAB_HOME": "/srv"}
    )
    assert config.storage.url == "sqlite:///:memory:"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('" staff-1, staff-2,, staff-3 ,"', ("staff-1", "staff-2", "staff-3")),
        ('"*"', ("*",)),
        ('""', ()),
        ("[staff-1, staff-2]", ("staff-1", "staff-2")),
        ("${USERS}", ("u1", "u2")),
    ],
)
def test_allowed_users_accepts_a_list_or_a_comma_separated_string(
    tmp_path: Path, value: str, expected: tuple[str, ...]
) -> None:
    config = load_text(tmp_path, MINIMAL + f"    allowed_users: {value}\n", {"USERS": "u1,u2"})
    assert config.dingtalk.allowed_users == expected


def test_agent_command_string_is_split_like_a_shell(tmp_path: Path) -> None:
    text = MINIMAL + 'agent:\n  type: command\n  command: python -m bot --name "two words"\n'
    assert load_text(tmp_path, text).agent.command == ("python", "-m", "bot", "--name", "two words")


def test_yaml_keys_are_read_as_written_and_merge_keys_work(tmp_path: Path) -> None:
    text = MINIMAL + (
        "agent:\n  env: &env {on: 'yes', 2: b}\n  <<: {timeout_s: 30, max_retries: 4}\n  timeout_s: 10\n"
        "hooks:\n  config:\n    audit: *env\n"
    )
    config = load_text(tmp_path, text)
    assert dict(config.agent.env) == {"on": "yes", "2": "b"}
    assert (config.agent.timeout_s, config.agent.max_retries) == (10.0, 4)
    assert dict(config.hooks.config["audit"]) == {"on": "yes", "2": "b"}


def test_result_is_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL + "commands:\n  aliases: {/clear: /new}\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dingtalk.app_key = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.commands.aliases["/x"] = "/help"  # type: ignore[index]
    assert dict(config.commands.aliases) == {"/clear": "/new"}


def test_hook_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    text = MINIMAL + f"hooks:\n  paths: [hooks, ../shared, '{tmp_path / 'abs'}', '~/h']\n"
    path = write(tmp_path / "etc", text)
    config = load_config(path, env={})
    assert config.hooks.paths == (
        tmp_path / "etc" / "hooks",
        tmp_path / "shared",
        tmp_path / "abs",
        Path("~/h").expanduser(),
    )


def test_default_hook_folder_is_beside_the_config_file_when_present(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert load_config(path, env={}).hooks.paths == ()
    (tmp_path / "hooks").mkdir()
    assert load_config(path, env={}).hooks.paths == (tmp_path / "hooks",)


def test_without_a_file_hooks_come_from_the_working_directory(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, env=CREDS).hooks.paths == ()
    (tmp_path / "hooks").mkdir()
    assert load_config(None, env=CREDS).hooks.paths == (tmp_path / "hooks",)


def test_empty_sections_mean_defaults() -> None:
    config = load_config(CONFIGS / "valid" / "empty_sections.yaml", env={})
    assert config.agent == AgentConfig() and config.sessions == SessionsConfig()


# --- built-in default and where the config comes from --------------------------------------------------


def test_builtin_default_reads_the_dingtalk_variables() -> None:
    env = {
        **CREDS,
        "DINGTALK_ROBOT_CODE": "robot-9",
        "DINGTALK_WEBHOOK_PORT": "9100",
        "DINGTALK_ALLOWED_USERS": "a, b",
        "DINGTALK_API_BASE": "http://127.0.0.1:9999",
    }
    config = load_config(None, env=env)
    assert config.source is None
    assert (config.dingtalk.app_key, config.dingtalk.app_secret) == ("dingkey0001", "s3cret-value-0001")
    assert config.dingtalk.robot_code == "robot-9"
    assert config.dingtalk.allowed_users == ("a", "b")
    assert config.dingtalk.api_base == "http://127.0.0.1:9999"
    assert config.http.port == 9100
    assert config.agent.type == "echo"


@pytest.mark.parametrize(
    "env", [{}, {"DINGTALK_APP_KEY": "", "DINGTALK_APP_SECRET": ""}], ids=["unset", "empty"]
)
def test_builtin_default_without_credentials_says_what_to_set(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env=env)
    text = str(caught.value)
    assert [p.path for p in caught.value.problems] == [
        "platforms.dingtalk.app_key",
        "platforms.dingtalk.app_secret",
    ]
    for needed in (
        "DINGTALK_APP_KEY",
        "DINGTALK_APP_SECRET",
        "Credentials and basic info",
        "open.dingtalk.com",
    ):
        assert needed in text


def test_edgecrab_config_variable_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "agent:\n  system_prompt: from-file\n")
    config = load_config(None, env={"EDGECRAB_CONFIG": str(path)})
    assert config.source == path and config.agent.system_prompt == "from-file"


def test_explicit_path_beats_edgecrab_config(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(path, env={"EDGECRAB_CONFIG": str(tmp_path / "missing.yaml")})
    assert config.source == path


def test_sandbox_fills_dummy_credentials_only_where_missing(tmp_path: Path) -> None:
    config = load_config(None, env={}, sandbox=True)
    assert (config.dingtalk.app_key, config.dingtalk.app_secret) == (SANDBOX_APP_KEY, SANDBOX_APP_SECRET)
    text = (
        "platforms:\n  dingtalk:\n    app_key: ${DINGTALK_APP_KEY}\n    app_secret: ${DINGTALK_APP_SECRET}\n"
    )
    assert load_text(tmp_path, text, {"DINGTALK_APP_KEY": "real"}, sandbox=True).dingtalk.app_key == "real"
    assert (
        load_text(tmp_path, "agent:\n  type: echo\n", sandbox=True).dingtalk.app_secret == SANDBOX_APP_SECRET
    )


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", env={})


# --- error reports --------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    text = (
        "platforms:\n  dingtalk:\n    app_key: k\n    app_secret: ${SECRET}\n    reply_format: html\n"
        "agent:\n  type: echoo\n  timeout_s: -1\nsessions:\n  group_scop: shared\n"
    )
    problems = problems_of(tmp_path, text)
    assert [(p.path, p.line) for p in problems] == [
        ("platforms.dingtalk.app_secret", 4),
        ("platforms.dingtalk.reply_format", 5),
        ("agent.type", 7),
        ("agent.timeout_s", 8),
        ("sessions.group_scop", 10),
    ]
    assert problems[2].hint == "did you mean `echo`?"
    assert problems[4].hint == "did you mean `group_scope`?"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        (MINIMAL + "  agent:\n    type: echo\n", "`agent` is a top-level section: unindent it"),
        (MINIMAL + "sessions:\n  model: x\n", "`model` belongs under `agent`"),
        (MINIMAL + "http:\n  prot: 80\n", "did you mean `port`?"),
        (MINIMAL + "http:\n  colour: red\n", "allowed keys here: host, port, token, callback_path"),
    ],
)
def test_unknown_keys_get_a_hint(tmp_path: Path, text: str, hint: str) -> None:
    [problem] = problems_of(tmp_path, text)
    assert problem.message.startswith("unknown key") and problem.hint == hint


def invalid_configs() -> list[Path]:
    return sorted((CONFIGS / "invalid").glob("*.yaml"))


def test_there_are_enough_invalid_examples() -> None:
    assert len(invalid_configs()) >= 10


@pytest.mark.parametrize("path", invalid_configs(), ids=lambda p: p.stem)
def test_invalid_config_reports_its_one_defect(path: Path, snapshot: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(path.parent)  # the report names the file as given: keep it short and stable
    with pytest.raises(ConfigError) as caught:
        load_config(Path(path.name), env={})
    assert len(caught.value.problems) == 1, str(caught.value)
    assert str(caught.value) == snapshot


@pytest.mark.parametrize("path", sorted((CONFIGS / "valid").glob("*.yaml")), ids=lambda p: p.stem)
def test_valid_configs_load(path: Path) -> None:
    assert load_config(path, env=CREDS).source == path


def test_valid_command_agent_example_is_read_faithfully() -> None:
    config = load_config(CONFIGS / "valid" / "command_agent.yaml", env={})
    assert config.dingtalk.allowed_groups == ("cid-a", "cid-b")
    assert config.agent.command == ("python", "-m", "mybot", "--reply", "in one line")
    assert dict(config.hooks.config["audit"]) == {"channel": "ops", "api_token": "audit-token-99999"}
    assert config.hooks.paths[1] == Path("/opt/edgecrab/hooks")


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    config = load_config(path, env={**CREDS, "DEEPSEEK_API_KEY": "sk-test-0001"})
    assert config.source == path


def test_example_config_mentions_every_schema_key() -> None:
    example = yaml.safe_load((ROOT / "config" / "example.yaml").read_text("utf-8"))
    schema = load_schema()

    def keys(node: dict[str, Any], prefix: str) -> set[str]:
        found = set()
        for name, sub in node.get("properties", {}).items():
            found.add(prefix + name)
            found |= keys(sub, prefix + name + ".")
        return found

    def present(data: Any, prefix: str) -> set[str]:
        if not isinstance(data, dict):
            return set()
        return {prefix + k for k in data} | {x for k, v in data.items() for x in present(v, prefix + k + ".")}

    # `robots` is there as a comment: a list would make the example a several-robot configuration.
    assert keys(schema, "") - present(example, "") == {"platforms.dingtalk.robots"}


def test_config_error_renders_one_readable_block() -> None:
    error = HookLoadError(Problem("hooks/10_audit.py", "SyntaxError: invalid syntax", line=3, hint="fix it"))
    assert str(error) == (
        "hooks could not be loaded: 1 problem\n"
        "  - hooks/10_audit.py (line 3): SyntaxError: invalid syntax\n"
        "    hint: fix it"
    )
    assert isinstance(error, ConfigError) and error.exit_code == 2


# --- the schema -----------------------------------------------------------------------------------------


def test_schema_is_valid_json_schema_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_file_is_the_one_loaded_and_ships_in_the_wheel() -> None:
    assert load_schema() == json.loads((ROOT / "schemas" / "config.schema.json").read_text("utf-8"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include["schemas/config.schema.json"] == "edgecrab/schemas/config.schema.json"


def _object_schemas(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)] if "properties" in node else []
    for name, sub in node.get("properties", {}).items():
        found += _object_schemas(sub, f"{path}.{name}".lstrip("."))
    return found


def test_every_property_is_documented_and_every_object_closed() -> None:
    for path, node in _object_schemas(load_schema()):
        assert node.get("additionalProperties") is False, path
        for name, sub in node["properties"].items():
            assert sub.get("description"), f"{path}.{name} has no description"
            required = [*node.get("required", []), *node.get("then", {}).get("required", [])]
            optional = name == "robots"  # no default: without it, platforms.dingtalk is the one robot
            assert "default" in sub or name in required or optional, f"{path}.{name} has no default"


SECTIONS = {
    "platforms.dingtalk": DingTalkConfig,
    "platforms.dingtalk.card": CardConfig,
    "agent": AgentConfig,
    "sessions": SessionsConfig,
    "commands": CommandsConfig,
    "hooks": HooksConfig,
    "storage": StorageConfig,
    "http": HttpConfig,
}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_schema_and_dataclasses_agree_on_keys_and_defaults(section: str) -> None:
    node = dict(_object_schemas(load_schema()))[section]
    cls = SECTIONS[section]
    keys = set(node["properties"]) - {"robots"}  # the robots list builds more of the same dataclass
    assert keys == {f.name for f in dataclasses.fields(cls)}
    config = load_config(None, env=CREDS)
    effective = config_to_dict(config)
    for part in section.split("."):
        effective = effective[part]
    for f in dataclasses.fields(cls):
        if f.name in ("app_key", "app_secret", "robot_code") or (section, f.name) == ("hooks", "paths"):
            continue  # no default / resolved by the loader
        assert node["properties"][f.name]["default"] == effective[f.name], f"{section}.{f.name}"


# --- showing --------------------------------------------------------------------------------------------


def test_redacted_dict_hides_every_secret_and_keeps_the_rest() -> None:
    env = {"DINGTALK_APP_SECRET": "s3cret-value-0001"}
    config = load_config(CONFIGS / "valid" / "command_agent.yaml", env=env)
    config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, api_key="sk-live-abcdef"))
    shown = redacted_dict(config)
    text = yaml.safe_dump(shown, allow_unicode=True)
    for secret in ("test-secret-0001", "sk-live-abcdef", "tok-abcdef-123456", "audit-token-99999"):
        assert secret in yaml.safe_dump(config_to_dict(config))
        assert secret not in text
    assert shown["platforms"]["dingtalk"]["app_secret"] == "***"
    assert shown["agent"]["api_key"] == "***"
    assert shown["agent"]["env"] == {"MYBOT_MODE": "fast", "MYBOT_TOKEN": "***"}
    assert shown["hooks"]["config"]["audit"] == {"channel": "ops", "api_token": "***"}
    assert shown["platforms"]["dingtalk"]["app_key"] == "dingtestkey0001"


def test_secret_values_are_hidden_wherever_they_appear(tmp_path: Path) -> None:
    text = (
        MINIMAL + "agent:\n  base_url: https://proxy.example/v1?key=sk-abc-12345\n  api_key: sk-abc-12345\n"
    )
    shown = redacted_dict(load_text(tmp_path, text))
    assert shown["agent"]["base_url"] == "https://proxy.example/v1?key=***"
    assert shown["agent"]["api_key"] == "***"
    assert (
        load_text(tmp_path, MINIMAL).agent.api_key == ""
        and redacted_dict(load_text(tmp_path, MINIMAL))["agent"]["api_key"] == ""
    )
