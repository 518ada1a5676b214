"""Hook callables that a copied or saved model drops: :class:`InertOnCopy`.

EMA and SWA models are ``copy.deepcopy`` copies, and ``torch.save(model)`` pickles the model with
its hook dicts. A hook wrapped in :class:`InertOnCopy` copies and pickles as :data:`INERT`, a
builtin that takes any arguments and returns None: a copied model does no capture work, and a
saved one loads without this package installed (it pickles as ``getattr(None, "__init__")``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["INERT", "InertOnCopy"]

#: What a copied or unpickled hook becomes.
INERT = None.__init__  # type: ignore[misc]


class InertOnCopy:
    """Call ``fn`` with the hook's arguments; copy and pickle as :data:`INERT`.

    Example::

        >>> import copy
        >>> hook = InertOnCopy(print)
        >>> copy.deepcopy(hook) is INERT, copy.copy(hook) is INERT
        (True, True)
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> None:
        self.fn(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return INERT

    def __copy__(self) -> Any:
        return INERT

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        return getattr, (None, "__init__")
