"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class LayraError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The CLI prints ``layra: error: <message>`` and exits with status 2; no
    traceback. Raise it for anything the user can fix (bad config value, missing
    file, incompatible vector); let genuine bugs propagate.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`LayraError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LayraError(message)
