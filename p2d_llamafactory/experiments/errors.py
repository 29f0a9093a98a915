"""How the offline tools end on bad input: one line naming what is wrong, never a traceback."""

import sys
from collections.abc import Callable


def reported(prog: str, body: Callable[[], int]) -> int:
    """Run a tool's ``body``; a file or path it cannot use (OSError, ValueError: unreadable, not UTF-8, malformed,
    a name the terminal cannot show) ends it with ``<prog>: error: …`` and exit code 2."""
    try:
        return body()
    except (OSError, ValueError) as err:
        text = str(err) or type(err).__name__
        if isinstance(err, UnicodeError):
            text += " (a file or folder name, or a file, that is not UTF-8: rename or re-save it)"
        sys.stderr.write(f"{prog}: error: {text}".encode("utf-8", "backslashreplace").decode("utf-8") + "\n")
        return 2
