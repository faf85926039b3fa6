"""Is the MLflow tracking server there? One quick question before a run starts, so that an
unreachable server costs seconds and one line, not MLflow's minutes of retries."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

from pretrain.trust.redact import redact_text, strip_userinfo

REACHABLE_TIMEOUT_S = 10.0  # one try: a refused connection fails at once, silence after this


class TrackingUnreachable(RuntimeError):
    """The MLflow server does not answer; the message is one line naming it (no credentials)."""


def check_reachable(tracking_uri: str, timeout: float = REACHABLE_TIMEOUT_S) -> None:
    """Fail fast with one line when an ``http(s)`` tracking server does not answer.

    MLflow's own client retries with backoff for minutes before it gives up; this asks the
    server's ``/health`` once and gives it ``timeout`` seconds in all (name lookup, connecting
    and the answer; the request runs in a daemon thread so that no step can exceed it). Any HTTP
    answer (even 401 from an authenticating proxy) counts as reachable; local stores are not
    checked."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = strip_userinfo(tracking_uri).rstrip("/") + "/health"
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                pass
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered
        except Exception as exc:  # noqa: BLE001 - every failure means "not reachable"
            outcome.append(exc)

    started = time.monotonic()
    asking = threading.Thread(target=ask, name="mlflow-health", daemon=True)
    asking.start()
    asking.join(timeout)
    if outcome and outcome[0] is None:
        return
    if not outcome:
        why = f"no answer within {timeout:.0f} s"
    else:
        reason = getattr(outcome[0], "reason", outcome[0])
        if isinstance(reason, (socket.timeout, TimeoutError)):
            why = f"no answer within {timeout:.0f} s"
        else:
            why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    raise TrackingUnreachable(
        f"MLflow server {redact_text(tracking_uri)} is not reachable ({why}, after "
        f"{time.monotonic() - started:.1f} s); check tracking.uri / $MLFLOW_TRACKING_URI and that "
        "the server is up")
