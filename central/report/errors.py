"""Exceptions of the report, all under ``CentralError`` so the CLI catches one root.

Tree (a branch of the one in ``central/errors.py``)::

    CentralError
    └── ReportError                 the report could not be written
        ├── GoldMissing             a gold Delta table is absent or empty: consolidate first
        ├── GoldInvalid             a gold table is unreadable or lacks a column the report needs
        └── ReportWriteError        the output file cannot be written (names the path)

deltalake, pyarrow and OSError errors are translated where they are raised:
``raise GoldInvalid(...) from exc``.
"""

from __future__ import annotations

from central.errors import CentralError


class ReportError(CentralError):
    """The report could not be written."""


class GoldMissing(ReportError):
    """A gold table does not exist yet or holds no rows."""


class GoldInvalid(ReportError):
    """A gold table cannot be read or lacks a column the report needs."""


class ReportWriteError(ReportError):
    """The report file cannot be written."""
