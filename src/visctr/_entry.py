"""The ``visctr`` console script: the CLI, with a Ctrl-C during start-up (while the
commands' modules import, or before a command's own handler runs) one line and exit 130,
as it is once a command runs (``visctr.cli_common.handle_errors``)."""

from __future__ import annotations

import sys

MESSAGE = "visctr: interrupted (Ctrl-C) while starting; nothing was written"


def run() -> None:
    try:
        from visctr.cli import main

        main()
    except KeyboardInterrupt:
        print(MESSAGE, file=sys.stderr)
        sys.exit(130)
