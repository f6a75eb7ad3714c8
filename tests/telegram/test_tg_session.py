"""Session file helpers and the interactive login, without any network."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest

from telegram_ingest.listener import SessionLocked, login, open_session_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_session_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    with open_session_path(tmp_path / "var" / "telegram.session") as session:
        assert session.path == tmp_path / "var" / "telegram.session"
        assert session.path.exists()
        assert mode(session.path) == 0o600
        assert session.lock_path == tmp_path / "var" / "telegram.session.lock"
        assert mode(session.lock_path) == 0o600
        assert session.lock_path.read_text() == f"{os.getpid()}\n"


def test_existing_session_file_is_tightened_to_0600(tmp_path: Path) -> None:
    path = tmp_path / "telegram.session"
    path.write_bytes(b"")
    path.chmod(0o644)
    with open_session_path(path):
        assert mode(path) == 0o600


def test_name_without_suffix_gets_the_telethon_suffix(tmp_path: Path) -> None:
    with open_session_path(str(tmp_path / "account1")) as session:
        assert session.path == tmp_path / "account1.session"


def test_second_open_of_the_same_session_fails_until_released(tmp_path: Path) -> None:
    path = tmp_path / "telegram.session"
    first = open_session_path(path)
    with pytest.raises(SessionLocked, match="in use by another process"):
        open_session_path(path)
    first.release()
    first.release()  # idempotent
    with open_session_path(path) as again:
        assert again.path == path


def test_second_process_fails_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "telegram.session"
    script = textwrap.dedent(
        f"""
        import sys
        from telegram_ingest.listener import SessionLocked, open_session_path
        try:
            open_session_path({str(path)!r})
        except SessionLocked as exc:
            print(exc)
            sys.exit(3)
        sys.exit(0)
        """
    )
    root = Path(__file__).resolve().parents[2]
    with open_session_path(path):
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 3
    assert "in use by another process" in done.stdout
    assert str(path) in done.stdout


class LoginClient:
    """Records the interactive flow Telethon's ``start`` would drive."""

    instances: ClassVar[list[LoginClient]] = []

    def __init__(self, session: str, api_id: int, api_hash: str) -> None:
        self.session, self.api_id, self.api_hash = session, api_id, api_hash
        self.answers: dict[str, str] = {}
        self.calls: list[str] = []
        LoginClient.instances.append(self)

    async def start(self, *, phone: Any, code_callback: Any, password: Any) -> None:
        self.calls.append("start")
        self.answers = {"phone": phone(), "code": code_callback(), "password": password()}

    async def get_me(self) -> Any:
        self.calls.append("get_me")
        return type("Me", (), {"first_name": "Test", "last_name": "User", "id": 12345})()

    async def get_dialogs(self) -> list[Any]:
        self.calls.append("get_dialogs")
        return []

    async def disconnect(self) -> None:
        self.calls.append("disconnect")


def test_login_drives_start_with_prompts_and_caches_dialogs(tmp_path: Path) -> None:
    LoginClient.instances.clear()
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return "12345"

    def secret(text: str) -> str:
        prompts.append(text)
        return "not-a-real-password"

    who = asyncio.run(
        login(
            1,
            "0" * 32,
            tmp_path / "tg",
            "+10000000000",
            client_factory=LoginClient,
            prompt=prompt,
            secret_prompt=secret,
        )
    )
    (client,) = LoginClient.instances
    assert (client.session, client.api_id) == (str(tmp_path / "tg.session"), 1)
    assert client.answers == {"phone": "+10000000000", "code": "12345", "password": "not-a-real-password"}
    assert client.calls == ["start", "get_me", "get_dialogs", "disconnect"]
    assert prompts == ["Telegram login code: ", "Telegram 2FA password (input hidden): "]
    assert who == f"logged in as Test User (id 12345); session {tmp_path / 'tg.session'}"
    assert mode(tmp_path / "tg.session") == 0o600
    with open_session_path(tmp_path / "tg.session"):  # the lock was released
        pass
