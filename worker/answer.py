"""One answer's text as it is generated: stop strings, and tool calls held back until whole.

With ``tool_choice`` "auto" the answer is undecided until its first visible character: "{"
starts a tool call, which is held back and parsed at the end; anything else is plain text.
A required or named tool choice is a call from the start.
"""

from __future__ import annotations

from xb.core.protocol import Tool, Usage
from xb.worker.backend import Done, StopText
from xb.worker.structured import parse_call


class Answer:
    def __init__(self, stop: list[str], tools: list[Tool], tool_choice: str) -> None:
        self._text = StopText(stop)
        self._tools = tools
        choice = tool_choice if tools else "none"
        self._holding = choice not in ("none", "auto")  # the answer must be a call
        self._undecided = choice == "auto"  # the answer may be a call: watch for "{"
        self._held: list[str] = []

    @property
    def stopped(self) -> bool:
        return self._text.stopped

    def feed(self, data: bytes) -> str:
        """The text that may be shown now, given the next token's bytes."""
        piece = self._text.feed(data)
        if self._undecided:
            seen = "".join(self._held) + piece
            self._held.clear()
            if not seen.strip():
                self._held.append(seen)
                return ""
            if seen.lstrip().startswith("{"):
                self._undecided, self._holding = False, True
                self._held.append(seen)
                return ""
            self._undecided = False
            return seen  # plain text after all: release what was held
        if self._holding:
            self._held.append(piece)
            return ""
        return piece

    def done(self, finish_reason: str, usage: Usage) -> Done:
        """The end of the answer: the text still held back, or the tool call it made."""
        rest = "".join(self._held) + self._text.flush()
        calls = parse_call(rest, self._tools) if self._held else ()
        if calls:
            return Done("tool_calls", usage, "", tool_calls=calls)
        return Done(finish_reason, usage, rest)
