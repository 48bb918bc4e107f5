"""A stream's place in line, shown on stderr until its first token arrives."""

from __future__ import annotations

from rich.console import Console
from rich.status import Status

from xb.client.calls import waiting_text


class WaitingLine:
    """On a terminal, one line updated in place and erased at the first token; elsewhere
    (a pipe, a log), one line per change, which stays."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None
        self._shown = 0

    def show(self, position: int) -> None:
        if position == self._shown:
            return
        self._shown = position
        text = waiting_text(position)
        if not self.console.is_terminal:
            self.console.print(text, highlight=False)
        elif self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def clear(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
