"""User-facing errors: CLIs print these as one clear line and exit non-zero."""


class JShearError(Exception):
  """Bad input (file, tensor, config key): the message names the problem."""


def check(cond: bool, msg: str) -> None:
  if not cond:
    raise JShearError(msg)
