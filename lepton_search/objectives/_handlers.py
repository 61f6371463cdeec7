"""Compression handlers, registered by the config value that selects them.

A compression step (pruning, quantization) is a table from the config's selector (``pruning.method``,
the quantization mode) to the function that carries it out, in the way torchao maps a config type to
its module handler. A new pruning structure or quantization mode is then one handler and one
registration beside it, rather than another branch in every function that dispatches on the name;
the space's list of allowed names (``spaces._config``) is the other half, and a test keeps the two
equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lepton_search.errors import CompressionError

Handler = TypeVar("Handler", bound=Callable[..., object])


class HandlerRegistry(Generic[Handler]):
    """Handlers of one compression step by selector value.

    Args:
        selector: The config field whose value picks the handler, as a user writes it
            (``"pruning.method"``); error messages name it.
    """

    def __init__(self, selector: str) -> None:
        self.selector = selector
        self._handlers: dict[str, Handler] = {}

    def register(self, *keys: str) -> Callable[[Handler], Handler]:
        """Decorator: ``handler`` carries out the step for each of ``keys``.

        Raises:
            ValueError: a key already has a handler (two would silently shadow each other).
        """

        def decorate(handler: Handler) -> Handler:
            for key in keys:
                if key in self._handlers:
                    raise ValueError(
                        f"{self.selector} = {key!r} already has the handler {self._handlers[key].__qualname__}; "
                        f"{handler.__qualname__} cannot take it too. Register the new handler under a new name."
                    )
                self._handlers[key] = handler
            return handler

        return decorate

    def get(self, key: str) -> Handler:
        """The handler for ``key``.

        Raises:
            CompressionError: no handler is registered for ``key``.
        """
        try:
            return self._handlers[key]
        except KeyError:
            raise CompressionError(
                f"{self.selector} = {key!r} has no compression handler; registered: {sorted(self._handlers)}. "
                "Use one of those, or register a handler for it."
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))
