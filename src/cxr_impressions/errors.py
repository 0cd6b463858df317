"""One exception type for bad input, reported to the user as a single line."""


class InputError(Exception):
    """Bad input (file, field or param) that the user must fix.

    The message is one line and names the file, line or param at fault.
    """


class TooLargeError(InputError):
    """Input over a configured size bound (upload bytes, image pixels): the server's 413."""
