"""The one exception the data layer raises for problems with the data itself."""

from __future__ import annotations


class DataError(Exception):
    """A data path, shard or sample problem that training cannot work around.

    The message always names the path, URL or shard concerned so a user can act on it.

    A DataError raised in a DataLoader worker process reaches the main process re-created by torch
    with the message ``Caught DataError in DataLoader worker process N.`` followed by the
    worker's traceback; the original message (its last line) is restored here, so the one line a
    user sees still names the shards.

    The message is redacted here (:func:`pretrain.trust.redact.redact_text`), once for every
    place that raises: shard URLs may carry a token or ``user:pass@``, and this line reaches the
    terminal, the Ray logs and the job's failure reason.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            from pretrain.trust.redact import redact_text  # lazy: pretrain.config imports us

            args = (redact_text(_original_message(args[0])),)
        super().__init__(*args)


_WRAPPED = "Caught DataError in DataLoader worker process"


def _original_message(message: str) -> str:
    if not message.startswith(_WRAPPED):
        return message
    marker = "DataError: "
    last = message.rstrip().rfind(marker)
    return message[last + len(marker):].strip() if last >= 0 else message
