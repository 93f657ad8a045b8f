"""``cals-train``: the streaming trainer (sync critic, A2L, CALS). Not built yet."""

from __future__ import annotations

import sys


def main() -> None:
    print(
        "cals-train: the trainers are not implemented in this release yet "
        "(tracked in the project's issues: sync critic, A2L, CALS). "
        "Prepare data now with `cals-prep`.",
        file=sys.stderr,
    )
    sys.exit(2)
