"""Kaggle credentials, as the kaggle CLI (2.x) finds them, and the guard that keeps them home.

The CLI authenticates with, in order: an access token (``KAGGLE_API_TOKEN``, the token itself or
the path of a file holding it; ``~/.kaggle/access_token``), a legacy API key (``KAGGLE_USERNAME`` and
``KAGGLE_KEY``, each overriding ``kaggle.json`` of ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else
``$XDG_CONFIG_HOME/kaggle``), or OAuth credentials (``~/.kaggle/credentials.json``, written by
``kaggle auth login``). :func:`require_credentials` checks that one of them is there *before* the
kaggle package is imported (it authenticates on import, and exits when it cannot).

:func:`scan_for_secrets` is run on every folder that leaves the machine (kernel folder, code data
set): no credential file, and no credential value (token, key) in any file, wheels' members
included.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

from rl_lib.errors import UserError

#: Names of files that hold credentials; none may be in a folder that is uploaded.
CREDENTIAL_FILES = ("kaggle.json", "access_token", "access_token.txt", "credentials.json")
HELP = ("set KAGGLE_API_TOKEN (a token from kaggle.com > Settings > API), or put it in "
        "~/.kaggle/access_token, or put kaggle.json (legacy key) in ~/.kaggle")  # fmt: skip


def config_file() -> Path:
    """The one ``kaggle.json`` the CLI reads (``KaggleApi.config``): in ``$KAGGLE_CONFIG_DIR``, else in
    ``~/.kaggle``, else (on Linux, when ``~/.kaggle`` does not exist) in ``$XDG_CONFIG_HOME/kaggle``."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    home = Path(os.path.expanduser("~"))
    folder = home / ".kaggle"
    if sys.platform.startswith("linux") and not folder.exists():
        folder = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return folder / "kaggle.json"


def config_files() -> list[Path]:
    """Every ``kaggle.json`` the CLI might read under some setting (for the secret scan)."""
    home = Path(os.path.expanduser("~"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    candidates = [Path(d) / "kaggle.json" for d in [os.environ.get("KAGGLE_CONFIG_DIR")] if d]
    return candidates + [home / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]


def legacy_config() -> dict:
    """``username`` and ``key`` as the CLI merges them: ``kaggle.json``, overridden per key by
    ``KAGGLE_USERNAME`` / ``KAGGLE_KEY``."""
    config = {k: v for k, v in _read_json(config_file()).items() if k in ("username", "key") and v}
    env = {"username": os.environ.get("KAGGLE_USERNAME"), "key": os.environ.get("KAGGLE_KEY")}
    return {**config, **{k: v for k, v in env.items() if v}}


def token_files() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    files = [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"]
    token = os.environ.get("KAGGLE_API_TOKEN")
    if token and Path(token).is_file():
        files.insert(0, Path(token))
    return files


def oauth_file() -> Path:
    return Path(os.path.expanduser("~")) / ".kaggle" / "credentials.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def credential_sources() -> list[str]:
    """Where credentials are (names, never values), in the CLI's order; empty when there are none."""
    sources = []
    if os.environ.get("KAGGLE_API_TOKEN"):
        sources.append("KAGGLE_API_TOKEN")
    sources += [str(p) for p in token_files() if p.is_file() and str(p) not in sources]
    if {"username", "key"} <= legacy_config().keys():
        env = [k for k in ("KAGGLE_USERNAME", "KAGGLE_KEY") if os.environ.get(k)]
        sources.append("/".join(env) if len(env) == 2 else str(config_file()))
    if oauth_file().is_file():
        sources.append(str(oauth_file()))
    return sources


def require_credentials() -> list[str]:
    """The credential sources; :class:`UserError` (exit 2) when there is none."""
    sources = credential_sources()
    if not sources:
        raise UserError(f"no Kaggle credentials found: {HELP}; nothing was pushed")
    return sources


def configured_username() -> str | None:
    """The user name the legacy credentials name (``KAGGLE_USERNAME`` or ``kaggle.json``), without
    the network; None when only a token is there (its user is known after authentication)."""
    username = legacy_config().get("username")
    return username if isinstance(username, str) and username else None


def secret_values() -> set[str]:
    """Every credential value present on this machine (tokens, keys); short strings are ignored."""
    values = {os.environ.get("KAGGLE_KEY", "")}
    token = os.environ.get("KAGGLE_API_TOKEN", "")
    if token and not Path(token).is_file():
        values.add(token)
    for path in token_files():
        try:
            values.add(path.read_text().strip())
        except OSError:
            pass
    for path in config_files():
        values.add(str(_read_json(path).get("key", "")))
    oauth = _read_json(oauth_file())
    values |= {v for v in oauth.values() if isinstance(v, str)}
    return {v for v in values if len(v) >= 8}


def _contents(path: Path):
    """``(label, bytes)`` of a file, and of each member when it is a zip (a wheel)."""
    data = path.read_bytes()
    yield str(path), data
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                yield f"{path}!{member}", archive.read(member)


def scan_for_secrets(folder: Path, secrets: set[str] | None = None) -> None:
    """:class:`UserError` if ``folder`` holds a credential file or any credential value."""
    secrets = secret_values() if secrets is None else secrets
    needles = [s.encode() for s in secrets]
    for path in sorted(Path(folder).rglob("*")):
        if path.name in CREDENTIAL_FILES:
            raise UserError(f"{path}: a credential file must never be uploaded; remove it")
        if not path.is_file():
            continue
        for label, data in _contents(path):
            if Path(label.rsplit("!", 1)[-1]).name in CREDENTIAL_FILES:
                raise UserError(f"{label}: a credential file must never be uploaded; remove it")
            if any(n in data for n in needles):
                raise UserError(f"{label} contains a Kaggle credential; it must never be uploaded, remove it")
