"""``shortfsm parse`` and ``shortfsm login``: wired into the main CLI through ``register``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import fields
from decimal import Decimal
from typing import Any, TextIO

from fsm.events import EntrySignal, LeadingMarket, ParsedMessage, RiskSignal, Unrecognised
from telegram_ingest.grammar import parse_message
from telegram_ingest.listener import SessionLocked, login

DEFAULT_SESSION = "var/telegram.session"
_KINDS: dict[type, str] = {
    LeadingMarket: "leading",
    RiskSignal: "risk",
    EntrySignal: "entry",
    Unrecognised: "unrecognised",
}


def register(subparsers: Any) -> None:
    """Add the ``parse`` and ``login`` subcommands to an argparse subparsers object."""
    parse = subparsers.add_parser(
        "parse",
        help="parse one channel message and print the result as JSON",
        description="Parse a Telegram channel message (from --text or stdin) with the signal grammar. "
        "Exit code 0 when recognised, 1 when not.",
    )
    parse.add_argument("--text", help="the message text (default: read stdin)")
    parse.set_defaults(func=run_parse)

    log_in = subparsers.add_parser(
        "login",
        help="log the Telegram user account in once (interactive)",
        description="Interactive one-time Telegram login. Reads TELEGRAM_API_ID, TELEGRAM_API_HASH and "
        "TELEGRAM_PHONE from the environment and asks for the login code (and 2FA password).",
    )
    log_in.add_argument(
        "--session", default=DEFAULT_SESSION, help=f"session file (default {DEFAULT_SESSION})"
    )
    log_in.set_defaults(func=run_login)


def parsed_to_json(parsed: ParsedMessage) -> dict[str, Any]:
    """``{"kind", "fields", "reason"}`` with Decimals as strings."""
    values = {f.name: _plain(getattr(parsed, f.name)) for f in fields(parsed)}
    reason: str | None
    if isinstance(parsed, Unrecognised):
        del values["reason"]
        reason = parsed.reason
    elif isinstance(parsed, LeadingMarket):
        reason = parsed.field_error
    else:
        reason = None
    return {"kind": _KINDS[type(parsed)], "fields": values, "reason": reason}


def run_parse(args: argparse.Namespace, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    text = args.text if args.text is not None else _read_stdin(stdin or sys.stdin)
    parsed = parse_message(text)
    out = stdout or sys.stdout
    out.write(json.dumps(parsed_to_json(parsed), ensure_ascii=False) + "\n")
    return 1 if isinstance(parsed, Unrecognised) else 0


def run_login(args: argparse.Namespace, *, stderr: TextIO | None = None) -> int:
    err = stderr or sys.stderr
    names = ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_PHONE")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        err.write(
            f"login needs {', '.join(missing)} in the environment "
            "(api id and hash from https://my.telegram.org, phone in international format)\n"
        )
        return 2
    try:
        api_id = int(os.environ["TELEGRAM_API_ID"])
    except ValueError:
        err.write("TELEGRAM_API_ID must be the numeric api id from https://my.telegram.org\n")
        return 2
    try:
        who = asyncio.run(
            login(api_id, os.environ["TELEGRAM_API_HASH"], args.session, os.environ["TELEGRAM_PHONE"])
        )
    except SessionLocked as exc:
        err.write(f"{exc}\n")
        return 1
    except (KeyboardInterrupt, EOFError):
        err.write("login cancelled\n")
        return 1
    except Exception as exc:  # the operator needs the cause, not a traceback
        err.write(f"login failed: {type(exc).__name__}: {exc}\n")
        return 1
    print(who)
    return 0


def _read_stdin(stream: TextIO) -> str:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        data: bytes = buffer.read()
        return data.decode("utf-8", "replace")
    return stream.read()


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Decimal) else value
