"""The one error every model-loading failure raises, and the one-line form of a cause.

Example::

    >>> issubclass(ModelLoadError, ValueError)
    True
    >>> first_line(RuntimeError("first\\nsecond"))
    'first'
"""

from __future__ import annotations

__all__ = ["ModelLoadError", "first_line"]


class ModelLoadError(ValueError):
    """The model, its weights or its checkpoint could not be loaded; the message says why.

    Example::

        >>> str(ModelLoadError("unknown torchvision model 'resnet0'"))
        "unknown torchvision model 'resnet0'"
    """


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, or its type's name when the message is empty.

    Example::

        >>> first_line(OSError())
        'OSError'
    """
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
