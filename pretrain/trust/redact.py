"""The one place that decides what is a secret, and hides it before anything is shown or stored.

Config values end up in MLflow params, the ``config.yaml`` artifact, logs and Ray job metadata,
all readable by everyone who can read the run. Secrets belong in environment variables
(``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, ``AWS_*``, ``RAY_AUTH_TOKEN``) or Kubernetes Secrets,
never in a config; when one slips in anyway it is replaced by ``***`` here:

- the userinfo of every URI (``https://user:pass@host`` -> ``https://***@host``), wherever it sits
  in a string (a ``pipe:curl ...`` data path included);
- the value of every URL query parameter whose name looks secret (``?token=...``,
  ``X-Amz-Signature=...``);
- ``Authorization``-style ``Bearer``/``Basic`` credentials and curl's ``-u USER:PASS`` inside a
  string;
- the whole value of every mapping key whose name looks secret (``api_key``, ``password``, ...),
  numbers excepted.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# Names that say "secret": matched anywhere in a key or query-parameter name, case-insensitive.
_SECRET_NAME = re.compile(
    r"secret|token|passw|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential|"
    r"signature|auth|^sig$", re.IGNORECASE)
# Userinfo runs to the authority's last "@" (as urllib splits it): a password holding a raw "@"
# ("https://u:p@ss@host") is hidden whole, not cut at its first "@".
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#]+)@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
_AUTH_HEADER = re.compile(r"(?P<kind>\b(?:Bearer|Basic))\s+[A-Za-z0-9._~+/=-]+",
                          re.IGNORECASE)
# curl's ``-u USER:PASSWORD`` / ``--user USER:PASSWORD`` in a ``pipe:curl ...`` data path.
_CURL_USER = re.compile(r"(?P<flag>(?<!\S)(?:-u|--user)(?:\s+|=))(?P<quote>['\"]?)[^\s'\"]+")


def is_secret_name(name: str) -> bool:
    """Whether a key or parameter named ``name`` holds a secret (``api_key``, ``db_password``)."""
    return bool(_SECRET_NAME.search(name))


def redact_text(text: str) -> str:
    """``text`` with URI userinfo, secret query values, bearer credentials and curl ``-u``
    credentials replaced."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _QUERY_PARAM.sub(lambda m: (f"{m['sep']}{m['name']}={REDACTED}"
                                       if is_secret_name(m["name"]) else m[0]), text)
    text = _CURL_USER.sub(lambda m: f"{m['flag']}{m['quote']}{REDACTED}", text)
    return _AUTH_HEADER.sub(lambda m: f"{m['kind']} {REDACTED}", text)


def redact(value: Any, key: str = "") -> Any:
    """``value`` (a config tree, list, string or scalar) with every secret replaced by ``***``.

    ``key`` is the name the value is stored under; a secret-looking name hides the whole value
    (dicts and lists below it included) unless it is empty or a number (``max_tokens: 512`` is
    no secret). Non-secret scalars come back unchanged.
    """
    if (key and is_secret_name(key) and value not in (None, "", {}, [])
            and not isinstance(value, (bool, int, float))):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def holds_secret(value: Any, key: str = "") -> bool:
    """Whether :func:`redact` would change ``value``."""
    return redact(value, key) != value


def secret_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of ``tree`` whose values hold a secret (for one-line refusals)."""
    found: list[str] = []
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and not is_secret_name(str(key)):
            found += secret_keys(value, dotted)
        elif holds_secret(value, str(key)):
            found.append(dotted)
    return found


def has_userinfo(text: str) -> bool:
    """Whether ``text`` holds a URI with userinfo (``s3://KEY:SECRET@bucket``, ``http://u@host``),
    by the same rule :func:`redact_text` hides it with."""
    return bool(_USERINFO.search(text))


def strip_userinfo(uri: str) -> str:
    """``uri`` without its userinfo (``https://u:p@host`` -> ``https://host``), for URIs that are
    shipped and used elsewhere: the credentials travel in environment variables instead."""
    return _USERINFO.sub(lambda m: m["scheme"], uri)
