"""keel: bot layer."""

import sys

# httpx imports its command line (and with it click, ~1.5 MB resident) whenever click is
# installed, and falls back quietly when that import fails. keel never runs httpx's command line;
# a None entry makes the import fail at once (issue 15: idle memory).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
