"""`python -m app`: start the TuneDeck dashboard."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading

from . import read_access
from .auth import AuthConfigError, generated_login, make_checker, parse_credentials
from .config import LOG_LEVELS, ConfigError, Settings, env_help_text
from .logging_setup import configure

log = logging.getLogger("tunedeck")
SHUTDOWN_S = 4.0  # a stop (SIGTERM) cancels the running export and exits within Docker's grace period


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="TuneDeck: mission control for fine-tuning open LLMs on one Docker host.",
        epilog=env_help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=settings.host, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="port to listen on (default: %(default)s)")
    parser.add_argument("--share", action="store_true", default=settings.share,
                        help="create a public Gradio share link (needs a login; one is generated if none is set)")
    parser.add_argument("--root-path", default=settings.root_path,
                        help="sub-path when served behind a reverse proxy (default: none)")
    parser.add_argument("--log-level", default=settings.log_level, choices=LOG_LEVELS,
                        help="log level (default: %(default)s)")
    return parser.parse_args(argv)


def is_local(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def login_for(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """TUNEDECK_AUTH, else (when the dashboard is reachable beyond this machine, or TUNEDECK_LOGIN=always)
    the generated login."""
    creds = parse_credentials(settings.auth)
    if creds or (is_local(args.host) and not args.share and settings.login != "always"):
        return creds
    creds, path, created = generated_login(settings.data_dir)
    user, password = next(iter(creds.items()))
    if created:
        print(f"tunedeck: no TUNEDECK_AUTH is set, so a login was generated and saved in {path} (mode 0600):\n"
              f"tunedeck:     user: {user}    password: {password}\n"
              f"tunedeck: it is printed only this once; read it again with `cat {path}` in the app container,\n"
              f"tunedeck: or set TUNEDECK_AUTH=user:password to choose your own.", file=sys.stderr, flush=True)
    else:
        print(f"tunedeck: using the login saved in {path} (user {user}); set TUNEDECK_AUTH to choose another.",
              file=sys.stderr, flush=True)
    return creds


def main(argv: list[str] | None = None) -> int:
    reads_all = read_access.enable()  # first: before any thread starts (capabilities are per thread)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"tunedeck: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, settings)
    configure(args.log_level)
    if not reads_all:
        log.info("running as uid %d without CAP_DAC_READ_SEARCH: files the tools keep private (safetensors "
                    "weights are mode 0600) cannot be read; compose/docker-compose.yml adds it (cap_add)", os.getuid())
    try:
        creds = login_for(args, settings)
    except AuthConfigError as exc:
        print(f"tunedeck: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tunedeck: a login is needed to listen on {args.host} or to share, and none could be saved in "
              f"{settings.data_dir} ({exc.strerror or exc}); set TUNEDECK_AUTH=user:password.", file=sys.stderr)
        return 2

    from .runtime import Runtime
    from .ui.layout import build_app, launch

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    runtime = Runtime.create(settings).start()
    demo = build_app(runtime, login=bool(creds))
    launch(
        demo, runtime,
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        root_path=args.root_path or None,
        auth=make_checker(creds) if creds else None,
        auth_message="TuneDeck login" if creds else None,
        footer_links=["api"],
    )
    if args.share and not demo.share_url:
        print(
            "tunedeck: could not create a share link (is this machine offline?). "
            f"Still serving locally at {demo.local_url}",
            file=sys.stderr, flush=True,
        )
    log.info("TuneDeck is serving on %s:%s", args.host, args.port)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping")
        if not runtime.shutdown(SHUTDOWN_S):
            log.warning("the running export did not finish its cleanup in %.0f s", SHUTDOWN_S)
        closer = threading.Thread(target=demo.close, daemon=True)
        closer.start()
        closer.join(1.0)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    # The web server's own threads are not daemons: leave now that every job is cleaned up.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
