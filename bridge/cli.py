"""`switchboard-bridge`: serve the bridge, manage agents, run the sandbox, or run the demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(data_dir=getattr(args, "data_dir", None))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bridge.app import create_app

    public = None if args.public_url is None else args.public_url
    settings = Settings.from_env(data_dir=args.data_dir, public_url=public)
    if not settings.public_url:
        # Twilio must reach the bridge at a public URL; on loopback (the sandbox, tests) our own address is it.
        settings = settings.with_(public_url=f"http://{args.host}:{args.port}")
    for problem in settings.problems():
        print(f"warning: {problem}", file=sys.stderr)
    from bridge.queues import ConfigError, load_config

    try:  # checked here so a mistake in the file is one clear line, not a traceback from the app's startup
        queues = load_config(settings.config_path, settings.region)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"switchboard-bridge: data in {settings.data_dir}", file=sys.stderr)
    print(
        f"switchboard-bridge: Twilio webhooks: {settings.public_url}/twilio/sms (status: /twilio/sms/status)",
        file=sys.stderr,
    )
    print(
        f"switchboard-bridge: calls: {settings.public_url}/twilio/voice (status: /twilio/voice/status); "
        f"queues: {', '.join(queues.names())}",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws_ping_interval=10.0,  # with the timeout below, a dead console is noticed within 20 s
        ws_ping_timeout=10.0,
        ws_max_size=1024 * 1024,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    from bridge.store import add_agent, list_agents, open_database, revoke_agent

    settings = _settings(args)
    db = open_database(settings.db_path)
    try:
        if args.action == "add":
            name = _agent_name(args.name)
            try:
                token = add_agent(db, name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(
                f"Agent {name!r} added. Their token is shown only this once; give it to them over a safe channel.",
                file=sys.stderr,
            )
            print(token)
            return 0
        if args.action == "list":
            agents = list_agents(db)
            if not agents:
                print("No agents yet: add one with `switchboard-bridge agents add NAME`.", file=sys.stderr)
            for agent in agents:
                state = f"revoked {agent.revoked_at}" if agent.revoked_at else "active"
                phone = agent.phone or "-"
                print(f"{agent.name}\t{state}\tadded {agent.created_at}\tphone {phone}")
            return 0
        if args.action == "set-phone":
            from bridge.handoff import parse_endpoint
            from bridge.phones import InvalidNumber
            from bridge.store import set_agent_phone

            name = _agent_name(args.name)
            if not args.endpoint:
                print("error: say which phone to ring, e.g. `agents set-phone ana +14155550123`.", file=sys.stderr)
                return 2
            try:
                endpoint = parse_endpoint(args.endpoint, settings.region)
            except InvalidNumber as exc:
                print(f"error: {exc}. Give an E.164 number, a sip: URI or a client: identity.", file=sys.stderr)
                return 1
            if not set_agent_phone(db, name, endpoint):
                print(f"error: no active agent named {name!r} (see `switchboard-bridge agents list`).", file=sys.stderr)
                return 1
            print(f"Calls {name} accepts now ring {endpoint}.", file=sys.stderr)
            return 0
        if args.action == "revoke":
            name = _agent_name(args.name)
            if revoke_agent(db, name):
                print(f"Agent {name!r} revoked; their open streams close within seconds.", file=sys.stderr)
                return 0
            print(f"error: no active agent named {name!r} (see `switchboard-bridge agents list`).", file=sys.stderr)
            return 1
    finally:
        db.close()
    return 2


def _agent_name(name: str | None) -> str:
    if not name or not name.strip() or len(name) > 64 or not name.isprintable():
        raise SystemExit("error: an agent name is 1-64 printable characters, e.g. `agents add ana`")
    return name.strip()


def cmd_sandbox(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.sandbox.app import SandboxConfig, serve

    config = SandboxConfig.from_env(bridge_url=args.bridge_url, customer_rate=args.rate, seed=args.seed)
    print(
        f"Twilio sandbox on http://127.0.0.1:{args.port} (account {config.account_sid}); webhooks to "
        f"{config.bridge_url or 'nowhere'}",
        file=sys.stderr,
    )
    asyncio.run(serve(config, host="127.0.0.1", port=args.port))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    return run_demo(
        data_dir=args.data_dir,
        rate=args.rate,
        seconds=args.seconds,
        for_console=args.for_console,
        call_rate=args.call_rate,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard-bridge",
        description="Switchboard's bridge: Twilio webhooks in, a durable event log, a WebSocket stream to consoles.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the bridge")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--data-dir", type=Path, help="where the event log lives (default: SWITCHBOARD_DATA_DIR)")
    serve.add_argument("--public-url", help="the base URL Twilio calls (default: SWITCHBOARD_PUBLIC_URL)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    agents = sub.add_parser("agents", help="add, list or revoke agents")
    agents.add_argument("action", choices=["add", "list", "revoke", "set-phone"])
    agents.add_argument("name", nargs="?", help="the agent's name (for add, revoke and set-phone)")
    agents.add_argument(
        "endpoint", nargs="?", help="set-phone: the phone calls ring, an E.164 number, sip: URI or client: identity"
    )
    agents.add_argument("--data-dir", type=Path, help="the bridge's data directory")
    agents.set_defaults(func=cmd_agents)

    sandbox = sub.add_parser("sandbox", help="run the local stand-in for Twilio")
    sandbox.add_argument("--port", type=int, default=8099, help="port to listen on (default 8099)")
    sandbox.add_argument("--bridge-url", default="http://127.0.0.1:8080", help="where to send webhooks")
    sandbox.add_argument("--rate", type=float, default=6.0, help="simulated customer texts per minute (0: none)")
    sandbox.add_argument("--seed", type=int, default=7, help="seed for the simulated customers")
    sandbox.set_defaults(func=cmd_sandbox)

    demo = sub.add_parser("demo", help="bridge and sandbox together on loopback, printing events as they flow")
    demo.add_argument("--data-dir", type=Path, help="keep the demo's data here (default: a temporary directory)")
    demo.add_argument("--rate", type=float, default=20.0, help="simulated customer texts per minute")
    demo.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--call-rate", type=float, default=2.0, help="simulated calls per minute with --for-console (0: none)"
    )
    demo.add_argument(
        "--for-console",
        action="store_true",
        help="print one JSON line (bridge URL, agent token) and serve, no demo agent (used by `switchboard demo`)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "agents" and args.action in ("add", "revoke", "set-phone") and not args.name:
        parser.error(f"agents {args.action} needs a NAME")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
