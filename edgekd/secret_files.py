"""Secrets read from files, never from the command line (the process list shows it): the dashboard's token, a
server's API key, a webhook's token (read_token), a broker's or OPC UA client's USER:PASSWORD (read_credentials).
Below every listener and output that needs one."""

from __future__ import annotations

import re
import stat
import sys
from pathlib import Path

from edgekd.errors import EdgekdError

MIN_TOKEN_LENGTH = 16
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")  # safe in a cookie and a header as it is
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"


def read_token(token: str | None, token_file: Path | None, what: str = "dashboard token",
               file_option: str = "--token-file") -> str | None:
    """The token from --token or --token-file (its first line), checked for length and characters."""
    if token is not None and token_file is not None:
        raise EdgekdError(f"give the {what} once: --token or {file_option}, not both")
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
            lines = token_file.read_text().splitlines()
        except FileNotFoundError:
            raise EdgekdError(f"{file_option} {token_file} does not exist: write a token into it, e.g. "
                              f"{MAKE_TOKEN} > {token_file}; chmod 600 {token_file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgekdError(f"{file_option} {token_file} cannot be read ({exc}): make it a readable text file") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            sys.stderr.write(f"warning: {file_option} {token_file} is readable by other users: chmod 600 it\n")
        token = lines[0].strip() if lines else ""
        where = f"{file_option} {token_file}"
    else:
        where = "--token"
    if token is None:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not TOKEN_PATTERN.fullmatch(token):
        raise EdgekdError(f"{where}: a {what} needs at least {MIN_TOKEN_LENGTH} characters of letters, digits "
                          f"and ._~+/=- (make one: {MAKE_TOKEN})")
    return token


def read_credentials(path: Path, option: str) -> tuple[str, str]:
    """USER:PASSWORD from the first line of a file (never on the command line, where the process list shows it)."""
    try:
        first = Path(path).read_text().splitlines()[:1]
    except OSError as exc:
        raise EdgekdError(f"{option} {path} cannot be read ({exc.strerror}): write USER:PASSWORD on its first line") \
            from None
    user, colon, password = (first[0].strip() if first else "").partition(":")
    if not user or not colon:
        raise EdgekdError(f"{option} {path}: its first line must be USER:PASSWORD")
    return user, password
