"""The one exception type a user can cause; the CLI prints its message on one line and exits 1."""


class BsqAudioError(Exception):
    """A problem with the user's input, files or settings, with a message that says what to do."""
