"""The project's error types: one base class, so every command reports them the same way.

``slam3r.cli.main`` is the error boundary: a :class:`Slam3rError` (or an ``OSError`` on a user path) becomes one
line ``slam3r CMD: error: <what and what to do>`` on stderr and exit status 2; anything else is a bug and keeps its
traceback. ``slam3r --debug CMD ...`` shows the traceback of every error.
"""

from __future__ import annotations


class Slam3rError(Exception):
    """Base of every error caused by what the user asked for (input, paths, settings, weights); the message says
    what is wrong and what to do."""


class InputError(Slam3rError, ValueError):
    """Bad input data or a bad path: an unreadable input, an unusable output directory, too few frames."""


EXIT_USAGE = 2
"""Exit status of a command refused because of its input (argparse uses the same)."""
