"""What the three commands (`mask-appliance`, `mask-deploy`, `mask-train`) share: `-v/--verbose` and each command's
own common options, accepted before or after the sub-command; logging on stderr; one-line errors that start with
the program's name; and one meaning for each exit code (EXIT_CODES, the epilog of every --help).

    family = Family("mask-deploy", __doc__, shared=add_ssh_options)
    p = family.command("push", "push a model and its card")
    args = family.parse(argv)  # logging is set up from here on
    return run("mask-deploy", lambda: act(args), bad_input=lambda: (CardError,))
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

OK, FAULT, BAD_INPUT = 0, 1, 2
PIPE_CLOSED = 128 + signal.SIGPIPE  # 141: what a shell reports for any tool that a closed pipe ended

EXIT_CODES = f"""exit codes:
  {OK}    ok
  {FAULT}    a fault at run time (a host, a probe or the frame loop failed)
  {BAD_INPUT}    bad input: a bad config, bad arguments, a model that does not match its card, a file that
       cannot be read
  {PIPE_CLOSED}  stdout was closed early (| head): the output stops quietly, as SIGPIPE stops other tools"""

JSON_HELP = "machine-readable output: only JSON on stdout; tables, progress and logs go to stderr"

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class BadInput(Exception):
    """Input the command cannot use (exit 2); the message is one line naming the file, key or value."""


class Family:
    """A command with sub-commands, whose common options (`-v`, and whatever `shared` adds) are accepted both before
    and after the sub-command: `mask-deploy --timeout 5 push HOST` and `mask-deploy push --timeout 5 HOST`."""

    def __init__(self, prog: str, description: str | None,
                 shared: Callable[[argparse.ArgumentParser], None] | None = None):
        self.prog, self.shared = prog, shared
        self.parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EXIT_CODES,
                                              formatter_class=argparse.RawDescriptionHelpFormatter,
                                              parents=[self._common(after=False)])
        self.sub = self.parser.add_subparsers(dest="command", required=True)
        self._after = self._common(after=True)

    def _common(self, after: bool) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(add_help=False)
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging (on stderr)")
        if self.shared:
            self.shared(p)
        if after:
            # argparse copies every attribute of the sub-command's namespace over the main one, defaults included:
            # without this, a default after the sub-command would undo the value given before it.
            for action in p._actions:
                action.default = argparse.SUPPRESS
        return p

    def command(self, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        """A sub-command's parser, with the common options and the exit codes in its --help."""
        return self.sub.add_parser(name, help=help, description=description or help, epilog=EXIT_CODES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, parents=[self._after])

    def error(self, message: str) -> None:
        """Bad arguments found after parsing: usage, `<prog>: error: message`, exit 2 (as argparse's own)."""
        self.parser.error(message)

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        args = self.parser.parse_args(argv)
        setup_logging(args.verbose)
        return args


def setup_logging(verbose: bool) -> None:
    """Logs on stderr (the journal under systemd): stdout is kept for what the command prints (tables, --json)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr, format=LOG_FORMAT)


def error(prog: str, message: object) -> None:
    """One line on stderr, prefixed with the program's name."""
    print(f"{prog}: {message}", file=sys.stderr)


def run(prog: str, work: Callable[[], int], *,
        bad_input: Callable[[], tuple[type[BaseException], ...]] = tuple,
        faults: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError)) -> int:
    """`work()`'s exit code; an error it raises becomes one line on stderr and BAD_INPUT (BadInput or one of
    `bad_input()`'s types, looked up only when an error comes, so that no command imports a heavy module just for
    an exception class) or FAULT (`faults`). Anything else is a bug and keeps its traceback."""
    try:
        code = work()
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return code
    except BrokenPipeError:
        silence_stdout()
        return PIPE_CLOSED
    except Exception as exc:
        if isinstance(exc, (BadInput, *bad_input())):
            error(prog, exc)
            return BAD_INPUT
        if isinstance(exc, faults):
            error(prog, exc)
            return FAULT
        raise


def silence_stdout() -> None:
    """After a BrokenPipeError on stdout: its reader is gone (`| head`), nothing more is wanted. Python would try to
    flush stdout again at exit and print "Exception ignored ... BrokenPipeError"; stdout on /dev/null keeps it quiet."""
    with contextlib.suppress(OSError, ValueError):  # stdout not a file (a test's capture): nothing to silence
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
