"""The package logger: library code logs, it never prints."""

import logging

logger = logging.getLogger("changedet")
logger.addHandler(logging.NullHandler())
