"""The one exception the data layer raises for problems with the data itself."""

from __future__ import annotations


class DataError(Exception):
    """A data path, shard or sample problem that training cannot work around.

    The message always names the path, URL or shard concerned so a user can act on it.
    """
