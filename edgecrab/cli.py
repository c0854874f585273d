"""The ``edgecrab`` command: arguments, logging, configuration, then hand over to the part that does the work.

Exit codes: 0 ok, 2 configuration or usage error, 1 runtime failure (130 on Ctrl-C outside the gateway,
which handles its own signals: 0 after a stop, 130/143 for a second SIGINT/SIGTERM, 1 when the stop did not
finish in time; :mod:`edgecrab.shutdown`). Errors print on stderr as one paragraph, never a traceback, unless
``--log-level debug``. The gateway, hooks and sandbox modules are imported only by the commands that need
them, so ``--version`` and ``config validate`` stay fast and work even when those cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from asyncio import CancelledError
from collections.abc import Callable, Sequence
from pathlib import Path

from edgecrab import __version__
from edgecrab.config import BUILTIN_SOURCE, Config, load_config, load_schema, secret_values
from edgecrab.errors import ConfigError, EdgecrabError
from edgecrab.logs import (
    FORMATS,
    LEVELS,
    parse_format,
    parse_level,
    redact,
    register_secret,
    setup_logging,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_EPILOG = """examples:
  edgecrab gateway start --sandbox        try it locally against the built-in DingTalk emulator
  edgecrab --config prod.yaml gateway start
  edgecrab --config prod.yaml config validate

Without --config (or $EDGECRAB_CONFIG) the gateway reads DINGTALK_APP_KEY, DINGTALK_APP_SECRET and the other
DINGTALK_* variables and answers with the echo agent.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    level_name = getattr(args, "log_level", None) or os.environ.get("EDGECRAB_LOG_LEVEL") or "info"
    try:
        level = parse_level(level_name)
    except ValueError as exc:
        print(f"edgecrab: EDGECRAB_LOG_LEVEL: {exc}", file=sys.stderr)
        return EXIT_USAGE
    format_name = getattr(args, "log_format", None) or os.environ.get("EDGECRAB_LOG_FORMAT") or "text"
    try:
        log_format = parse_format(format_name)
    except ValueError as exc:
        print(f"edgecrab: EDGECRAB_LOG_FORMAT: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(level, log_format)
    debug = level <= logging.DEBUG
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        try:
            return handler(args)
        except BaseExceptionGroup as group:
            # anyio task groups wrap a failure (a hook file that cannot load, a port in use) in an
            # ExceptionGroup, even several levels deep; the user is told the cause, never about the group.
            raise root_cause(group) from group
    except ConfigError as exc:
        return _fail(str(exc), exc.exit_code, debug)
    except EdgecrabError as exc:
        return _fail(f"edgecrab: {exc}", exc.exit_code, debug)
    except KeyboardInterrupt:
        print("edgecrab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = f"edgecrab: unexpected error: {type(exc).__name__}: {exc}"
        if not debug:
            message += "\n(run again with --log-level debug to see the traceback)"
        return _fail(message, EXIT_RUNTIME, debug)


def root_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to report for ``group``: its first :class:`EdgecrabError` (what we raise on purpose
    and word for the user), else its first exception that is not a cancellation, at any depth."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, EdgecrabError):
            return leaf
    real = [leaf for leaf in leaves if not isinstance(leaf, CancelledError)]
    return (real or leaves)[0]


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
    print(redact(message), file=sys.stderr)
    return code


def _common_options() -> argparse.ArgumentParser:
    """--config and --log-level are accepted before or after the command (`edgecrab gateway start --config
    f`); SUPPRESS keeps a sub-command's absent option from overwriting one given earlier."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML configuration file (default: $EDGECRAB_CONFIG, else DINGTALK_* variables)")
    common.add_argument("--log-level", metavar="LEVEL", type=_level_arg, default=argparse.SUPPRESS,
                        help=f"one of {', '.join(LEVELS)} (default: $EDGECRAB_LOG_LEVEL or info)")
    common.add_argument("--log-format", metavar="FORMAT", choices=FORMATS, type=str.lower,
                        default=argparse.SUPPRESS,
                        help="text, or json: one JSON object per line, for log shippers "
                        "(default: $EDGECRAB_LOG_FORMAT or text)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="edgecrab", parents=[common], description="A DingTalk gateway for AI agents.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgecrab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(name: str, text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parent = commands.add_parser(name, parents=[common], help=text)
        return parent.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str,
               handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, parents=[common], help=text)
        sub.set_defaults(handler=handler)
        return sub

    gateway = group("gateway", "run the gateway")
    start = action(gateway, "start", "connect to DingTalk and answer messages", _gateway_start)
    start.add_argument("--sandbox", action="store_true", help=_SANDBOX_HELP)
    start.add_argument("--port", type=_port_arg, default=None,
                       help=f"with --sandbox: port of the emulator's web chat (default: {SANDBOX_PORT}; "
                       "0 picks a free one)")

    config = group("config", "check or print the configuration")
    validate = action(config, "validate", "check the configuration and print every problem", _config_validate)
    show = action(config, "show", "print the effective configuration, secrets hidden", _config_show)
    for sub in (validate, show):
        sub.add_argument("--sandbox", action="store_true",
                         help="as `gateway start --sandbox` reads it (no credentials needed, sandbox state)")
    action(config, "schema", "print the JSON Schema of the configuration", _config_schema)

    doctor = commands.add_parser(
        "doctor", parents=[common],
        help="check a deployment: config, hooks, state directory, DingTalk credentials and Stream mode, "
        "clock, agent, port",
    )
    doctor.add_argument("--sandbox", action="store_true",
                        help="as `gateway start --sandbox` runs: DingTalk checks against the emulator")
    doctor.set_defaults(handler=_doctor)

    hooks = group("hooks", "inspect hooks")
    action(hooks, "list", "load the configured hooks and list them", _hooks_list)

    _add_send(commands, common)

    schedules = group("schedules", "inspect the schedules: messages the robot sends on its own")
    action(schedules, "list", "each schedule's cron, zone, target, next run and last fired slot",
           _schedules_list)

    sandbox = commands.add_parser("sandbox", parents=[common], help="run only the DingTalk emulator")
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sandbox.add_argument("--port", type=_port_arg, default=SANDBOX_PORT,
                         help=f"port to listen on (default: {SANDBOX_PORT}; 0 picks a free one)")
    sandbox.set_defaults(handler=_sandbox)
    return parser


def _add_send(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    send = commands.add_parser(
        "send", parents=[common], help="send a proactive message (the robot speaks first)",
        description=_SEND_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = send.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", metavar="STAFF_ID", action="append",
                        help="send a DM to this staff id (oToMessages/batchSend); repeat for several")
    target.add_argument("--group", metavar="OPEN_CONVERSATION_ID",
                        help="send into this group (groupMessages/send); the robot must be in it")
    send.add_argument("--at", metavar="STAFF_ID", action="append", default=[],
                      help="with --group: name this staff id at the end of the message (as text: "
                      "groupMessages/send cannot notify anyone); repeat for several")
    fmt = send.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", dest="format", action="store_const", const="markdown",
                     help="send as markdown (default: platforms.dingtalk.reply_format)")
    fmt.add_argument("--text", dest="format", action="store_const", const="text", help="send as plain text")
    send.add_argument("--title", default="", help="the markdown title: what the notification shows "
                      "(default: the start of the message)")
    send.add_argument("--robot", metavar="NAME", default="",
                      help="the robot to send as (its name in platforms.dingtalk.robots; default: the first)")
    send.add_argument("--direct", action="store_true",
                      help="send from this process even when a gateway is running (not through its ledger)")
    send.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=300.0,
                      help="give up waiting for DingTalk's answers after this long (default: 300)")
    send.add_argument("message", metavar="MESSAGE", help="the text, or - to read it from stdin")
    send.set_defaults(handler=_send)


def _seconds(value: str) -> float:
    """``--timeout``: a number of seconds above 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:  # nan too
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {value!r}")
    return seconds


_SANDBOX_HELP = (
    "run against the built-in DingTalk emulator; no DingTalk app needed. State is kept in sandbox.db in "
    "$EDGECRAB_HOME (default ~/.edgecrab), never in storage.url"
)
_SEND_DESCRIPTION = """Send a proactive message: a DM to staff ids, or a message into a group.

When the config's http.port is not 0 and a gateway answers there, the message goes through that gateway's
delivery ledger (POST /v1/send with Authorization: Bearer <http.token>; the gateway refuses it when no token
is set). Otherwise (or with --direct) this process sends it itself, the way the gateway would: the same
format, chunking, ordering, rate limits and retries. Exit 0 when DingTalk accepted every chunk, 1 when it
refused one (an invalid staff id, a group the robot is not in, ...) with DingTalk's reason, 2 for a usage
or configuration error."""
SANDBOX_PORT = 8765
"""The emulator's default port (``edgecrab.sandbox.DEFAULT_PORT``, not imported: the CLI starts fast)."""


def _level_arg(text: str) -> str:
    try:
        parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.lower()


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return port


# --- commands --------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace, *, sandbox: bool = False) -> Config:
    path = getattr(args, "config", None)
    config = load_config(Path(path) if path else None, sandbox=sandbox)
    for secret in secret_values(config):
        register_secret(secret)
    return config


def _cleartext_warnings(config: Config) -> list[str]:
    from edgecrab.config.rules import cleartext_warnings

    agent = config.agent
    return cleartext_warnings(config.dingtalk.api_base, agent.type, agent.base_url)


def _gateway_start(args: argparse.Namespace) -> int:
    config = _load(args, sandbox=args.sandbox)
    for warning in _cleartext_warnings(config):
        log.warning("[config] %s", warning)
    from edgecrab.serve import run_gateway

    return _code(run_gateway(config, sandbox=args.sandbox, port=args.port))


def _config_validate(args: argparse.Namespace) -> int:
    config = _load(args, sandbox=args.sandbox)
    mode = " (as the sandbox runs it)" if args.sandbox else ""
    for warning in _cleartext_warnings(config):
        print(redact(f"warning: {warning}"), file=sys.stderr)
    print(f"config OK{mode}: {config.source or BUILTIN_SOURCE}")
    return EXIT_OK


def _config_show(args: argparse.Namespace) -> int:
    config = _load(args, sandbox=args.sandbox)
    from edgecrab.config.show import effective_yaml

    print(redact(effective_yaml(config)), end="")
    return EXIT_OK


def _config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(load_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    config = _load(args, sandbox=args.sandbox)  # an invalid configuration exits 2 here, with every problem
    from edgecrab.ops.doctor import run_doctor

    return run_doctor(config, sandbox=args.sandbox)


def _hooks_list(args: argparse.Namespace) -> int:
    # Listing hooks needs no DingTalk credentials, so it loads the config the way the sandbox does.
    config = _load(args, sandbox=True)
    from edgecrab.hooks.manager import hooks_list_text

    print(hooks_list_text(config))
    return EXIT_OK


def _schedules_list(args: argparse.Namespace) -> int:
    config = _load(args)
    from edgecrab.core.schedulelist import run_schedules_list

    print(redact(run_schedules_list(config)))
    return EXIT_OK


def _send(args: argparse.Namespace) -> int:
    from edgecrab.replies.proactive import SendRequest

    if args.group is not None and not args.group.strip():
        print("edgecrab send: --group is empty: give the group's openConversationId", file=sys.stderr)
        return EXIT_USAGE
    text = sys.stdin.read() if args.message == "-" else args.message
    request = SendRequest(
        text=text, users=tuple(args.user or ()), group=args.group or "", at=tuple(args.at),
        fmt=args.format or "", title=args.title, robot=args.robot,
    )
    problems = request.problems()
    if problems:
        print("edgecrab send: " + "; ".join(problems), file=sys.stderr)
        return EXIT_USAGE
    config = _load(args)
    from edgecrab.ops.sendclient import run_send
    from edgecrab.replies.proactive import robot_config

    try:
        robot_config(config, request.robot)
    except ValueError as exc:
        print(f"edgecrab send: {exc}", file=sys.stderr)
        return EXIT_USAGE

    return run_send(config, request, direct=args.direct, timeout_s=args.timeout)


def _sandbox(args: argparse.Namespace) -> int:
    from edgecrab.sandbox import run_sandbox

    return _code(run_sandbox(args.host, args.port))


def _code(result: object) -> int:
    return EXIT_OK if result is None else int(result)  # type: ignore[call-overload]
