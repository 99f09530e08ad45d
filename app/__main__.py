"""`python -m app`: start the TuneDeck dashboard."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from .auth import AuthConfigError, make_checker, parse_credentials
from .config import Settings, env_help_text


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
                        help="create a public Gradio share link (requires TUNEDECK_AUTH)")
    parser.add_argument("--root-path", default=settings.root_path,
                        help="sub-path when served behind a reverse proxy (default: none)")
    return parser.parse_args(argv)


def is_local(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    args = parse_args(argv, settings)
    try:
        creds = parse_credentials(settings.auth)
    except AuthConfigError as exc:
        print(f"tunedeck: {exc}", file=sys.stderr)
        return 2
    if args.share and not creds:
        print(
            "tunedeck: refusing to create a share link without a login: a share link exposes the "
            "dashboard (and the Docker socket behind it) to the internet. Set TUNEDECK_AUTH=user:password "
            "(or the path of a credentials file) and try again.",
            file=sys.stderr,
        )
        return 2

    if not is_local(args.host) and not creds:
        print(
            f"tunedeck: refusing to listen on {args.host} without a login: the dashboard controls Docker "
            "(root on this host). Set TUNEDECK_AUTH=user:password, or listen on 127.0.0.1 behind a proxy.",
            file=sys.stderr,
        )
        return 2

    from .runtime import Runtime
    from .ui.layout import CSS, build_app

    runtime = Runtime.create(settings).start()
    demo = build_app(runtime)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        root_path=args.root_path or None,
        auth=make_checker(creds) if creds else None,
        auth_message="TuneDeck login" if creds else None,
        css=CSS,
        footer_links=["api"],
        prevent_thread_lock=True,
    )
    if args.share and not demo.share_url:
        print(
            "tunedeck: could not create a share link (is this machine offline?). "
            f"Still serving locally at {demo.local_url}",
            file=sys.stderr, flush=True,
        )
    try:
        demo.block_thread()
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
