"""Ray token authentication for the Jobs client.

Ray 2.60 clusters started with ``ray start --head`` require a bearer token on every dashboard
request (``RAY_AUTH_MODE=token``); nodes and clients find it in ``$RAY_AUTH_TOKEN``, the file named
by ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. We send it ourselves as an ``Authorization``
header instead of switching this whole process into Ray's token mode, so one laptop can talk to
several clusters with different tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"


class TokenError(ValueError):
    """The token named by the user cannot be read (one line, names the file)."""


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for error messages; never the token itself

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def _read(path: Path, source: str) -> Token:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise TokenError(f"cannot read the Ray token file {path}: {exc.strerror}") from None
    if not value:
        raise TokenError(f"the Ray token file {path} is empty")
    return Token(value, source)


def resolve_token(token_file: Path | None = None, env: Mapping[str, str] | None = None,
                  home: Path | None = None) -> Token | None:
    """The token to present, in this order: ``token_file`` (the ``--token-file`` option),
    ``$RAY_AUTH_TOKEN``, the file in ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``; None when
    there is none (clusters without token authentication need none)."""
    env = os.environ if env is None else env
    if token_file is not None:
        return _read(Path(token_file).expanduser(), f"--token-file {token_file}")
    if env.get(TOKEN_ENV, "").strip():
        return Token(env[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    if env.get(TOKEN_PATH_ENV):
        return _read(Path(env[TOKEN_PATH_ENV]).expanduser(), f"${TOKEN_PATH_ENV}")
    default = (home if home is not None else Path.home()) / DEFAULT_TOKEN_FILE
    if default.is_file():
        return _read(default, str(default))
    return None


def auth_failure_message(address: str, token: Token | None, rejected: bool) -> str:
    """One line for a 401 (no token) or 403 (``rejected``: wrong token) from the dashboard."""
    if rejected and token is not None:
        return (f"the Ray cluster at {address} rejected the token from {token.source} "
                "(wrong token for this cluster)")
    return (f"the Ray cluster at {address} requires a token: set ${TOKEN_ENV} or pass "
            "--token-file (the head node keeps it in ~/.ray/auth_token)")
