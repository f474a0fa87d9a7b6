"""The impression-log reader, kept importable from here (it lives in ``visctr.world.logs``,
below both the CTR model and the S2 encoder that read the logs)."""

from visctr.world.logs import LOG_COLUMNS, log_columns, open_log

__all__ = ["LOG_COLUMNS", "log_columns", "open_log"]
