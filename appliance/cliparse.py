"""What the three commands (`mask-appliance`, `mask-deploy`, `mask-train`) share: `--version`, `-v/--verbose` and
each command's own common options, accepted before or after the sub-command; logging (below); one-line errors that
start with the program's name; and one meaning for each exit code (EXIT_CODES, the epilog of every --help).

Logging: under systemd, where $JOURNAL_STREAM names stderr, every record goes to the journal whole, tracebacks
included (through python3-systemd's JournalHandler, one entry a record, where it is installed; else on stderr).
Elsewhere (a terminal) records go to stderr, and `keep_tracebacks` (mask-appliance run) moves tracebacks into a log
file in the state folder: the console then shows each record in one line, and only -v shows the tracebacks there.

    family = Family("mask-deploy", __doc__, shared=add_ssh_options)
    p = family.command("push", "push a model and its card")
    args = family.parse(argv)  # logging is set up from here on
    return run("mask-deploy", lambda: act(args), bad_input=lambda: (CardError,))
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from appliance import __version__

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
LOG_FILE = "mask-appliance.log"  # keep_tracebacks' file, in the state folder
LOG_FILE_BYTES = 1_000_000  # the file is rotated once at this size (one older file kept): 2 MB at most

_console: logging.Handler | None = None  # the stderr handler setup_logging installed on a terminal, if it did
_verbose = False


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
        self.parser.add_argument("--version", action="version", version=f"{prog} {__version__}",
                                 help="print the release and exit")
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
        setup_logging(args.verbose, self.prog)
        return args


def stderr_is_journal() -> bool:
    """Whether stderr is systemd's journal: systemd sets $JOURNAL_STREAM to the device:inode of the stream it connects
    a service's stdout and stderr to, and a terminal or pipe the service's output is moved to has another."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # no stderr, or not a file (a test's capture)
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def _journal_handler(prog: str | None) -> logging.Handler | None:
    """python3-systemd's JournalHandler (one journal entry a record, its traceback inside), or None without it."""
    try:
        from systemd.journal import JournalHandler  # python3-systemd, on the Pi
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=prog or os.path.basename(sys.argv[0]))
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))  # the level is the entry's PRIORITY
    return handler


def setup_logging(verbose: bool, prog: str | None = None) -> None:
    """Logs to the journal under systemd, else on stderr: stdout is kept for what the command prints (tables,
    --json). Nothing is changed where the process already has logging set up (a program that calls us, pytest)."""
    global _console, _verbose
    journal = stderr_is_journal()
    handler = _journal_handler(prog) if journal else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    _verbose = verbose
    _console = handler if not journal and handler in logging.getLogger().handlers else None


class OneLine(logging.Formatter):
    """The console's form of a record whose traceback a log file keeps: its one line, and where the traceback is."""

    def __init__(self, kept: Path):
        super().__init__(LOG_FORMAT)
        self.kept = kept

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        return f"{line} (traceback in {self.kept})" if record.exc_info and record.exc_info[0] else line


def _for_console(record: logging.LogRecord) -> bool:
    # `extra={"console": False}`: the command's own last line tells it (ServiceError); the file keeps the traceback.
    return getattr(record, "console", True) is not False


def keep_tracebacks(folder: Path) -> Path | None:
    """On a terminal (stderr not the journal), records at WARNING and above, tracebacks included, are also written
    to `folder`/mask-appliance.log, and without -v the console shows each record in one line, its traceback left to
    the file. Returns the file, or None where nothing changed: under the journal (it has the tracebacks), where
    setup_logging did not set up the console, or where the file cannot be opened (the console keeps them then)."""
    if _console is None:
        return None
    path = folder / LOG_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=1,
                                                       encoding="utf-8")
    except OSError as exc:
        logging.getLogger(__name__).warning("%s: cannot keep tracebacks there (%s); they stay on the console",
                                            path, exc.strerror or exc)
        return None
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s " + LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    if not _verbose:
        _console.setFormatter(OneLine(path))
        _console.addFilter(_for_console)
    return path


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
