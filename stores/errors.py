"""The error hierarchy lives in :mod:`scorebank.core.errors`; re-exported here so existing
imports keep working."""

from scorebank.core.errors import *  # noqa: F401,F403
from scorebank.core.errors import __all__  # noqa: F401
