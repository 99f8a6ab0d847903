"""The `optbench` command and `python -m optbench`.

SIGTERM (a cluster's time limit, `timeout`, a container stop) stops a command as Ctrl-C does:
what was done is kept, marked interrupted, exit code 130. Loading the CLI takes a second (NumPy,
pandas, matplotlib); a Ctrl-C or SIGTERM in that second ends it the same way, without a traceback.
"""

import signal
import sys


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from optbench.cli import app
    except KeyboardInterrupt:
        print("interrupted before the command started", file=sys.stderr)
        sys.exit(130)
    app()


if __name__ == "__main__":
    main()
