"""The chaos suite's marker, and its figures printed in the test session's summary."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_FIGURES = pytest.StashKey[list[tuple[str, list[str]]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: real processes killed and fuzzed under load")
    config.stash[_FIGURES] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a line of this test's figures: printed at once (seen with -s) and again
    in the session's summary, where a plain run shows them."""
    lines: list[str] = []
    request.config.stash[_FIGURES].append((request.node.name, lines))

    def record(line: str) -> None:
        print(line)
        lines.append(line)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    entries = [(name, lines) for name, lines in terminalreporter.config.stash[_FIGURES] if lines]
    if not entries:
        return
    terminalreporter.section("chaos figures")
    for name, lines in entries:
        terminalreporter.write_line(name)
        for line in lines:
            terminalreporter.write_line(f"  {line}")
