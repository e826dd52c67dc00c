"""Command-line parsing shared by the entry points: config overrides fail with one clear line.

    app.run(main, flags_parser=cli.parse_flags)

absl reports a malformed flag value (`--config.batch_size=abc`) as a flags error;
ml_collections raises a KeyError or AttributeError, with a traceback, for an
override that names no key of the config (`--config.batch_sise=32`). Both end here
as `FATAL Flags parsing error: ...` naming the flag, before `main` runs, so a
workdir is never touched by a mistyped command.
"""

import sys

from absl import app


def _message(error: BaseException) -> str:
  """The innermost message: ml_collections wraps a KeyError in an AttributeError."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, plus a readable exit for config overrides naming unknown keys."""
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    message = _message(e)     # "'batch_sise'\nDid you mean ..."
    key = message.splitlines()[0].strip("'\"") if message else ""
    culprits = [a for a in argv[1:] if a.startswith("--") and "." in a.split("=")[0]
                and key in a.split("=")[0].split(".")]
    if not culprits:      # not an override's key: a bug elsewhere, keep its traceback
      raise
    flag = culprits[0]
    hint = " ".join(line.strip() for line in message.splitlines()[1:])
    sys.stderr.write(f"FATAL Flags parsing error: {flag}: the config has no key {key!r}. "
                     f"{hint + ' ' if hint else ''}Overrides must name keys of the config file "
                     "(check the spelling); nothing was run.\n")
    sys.exit(1)
