"""Warnings given once per process: in one run a dataset is read, and its split made, several times."""

from __future__ import annotations

import logging

_said: set = set()  # the keys of the warnings given so far


def warn_once(log: logging.Logger, key, message: str, *args) -> None:
    """``log.warning(message, *args)``, unless a warning of the same ``key`` was given before."""
    if key in _said:
        return
    _said.add(key)
    log.warning(message, *args)
