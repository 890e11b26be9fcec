"""One status line while an endpoint starts: updated in place in a notebook, sparse lines on
stderr in a terminal. Light on purpose: no widgets, so a headless kernel shows it too."""

import sys
import time

__all__ = ["StatusLine"]


class StatusLine:
    """`update(text)` as often as wanted; a terminal sees at most one line every `every` s."""

    def __init__(self, label: str, every: float = 3.0):
        self.label = label
        self.every = every
        self._handle = None
        self._last = 0.0
        self._started = time.monotonic()
        try:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None and getattr(shell, "kernel", None) is not None:
                from IPython.display import Pretty, display

                self._pretty = Pretty
                self._handle = display(Pretty(self._line("starting")), display_id=True)
        except ImportError:
            pass

    def _line(self, text: str) -> str:
        return f"{self.label}: {text} ({time.monotonic() - self._started:.0f} s)"

    def update(self, text: str, force: bool = False) -> None:
        if self._handle is not None:
            self._handle.update(self._pretty(self._line(text)))
            return
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(f"dbxml: {self._line(text)}", file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        """The final state of the line (a notebook keeps it; a terminal gets the result printed by the caller)."""
        if self._handle is not None:
            self._handle.update(self._pretty(self._line(text)))
