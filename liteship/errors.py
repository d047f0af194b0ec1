"""Errors a user can cause. The CLI prints their message on one line and exits 1; anything else is a bug."""


class LiteshipError(Exception):
    """A problem with the user's input, files or devices, explained in one line."""

    exit_code = 1


class ConvertError(LiteshipError):
    """A checkpoint, calibration set or option that cannot become a bundle."""


class BundleError(LiteshipError):
    """A bundle or .tflite that is missing, truncated, tampered with or of an unknown schema."""


class RuntimeLiteshipError(LiteshipError):
    """Bad input to a model at run time: a prompt longer than the context, an image that is not an image."""


class DeviceError(LiteshipError):
    """A device that cannot be reached, is full, rejects the key, or fails a command."""
