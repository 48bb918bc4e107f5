"""The xb dashboard: cluster, launch and arena screens over the Python client."""

from __future__ import annotations

from collections.abc import Iterable

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen

from xb.client import AsyncClient
from xb.core.settings import DEFAULT_ENDPOINT
from xb.tui.arena import ArenaScreen
from xb.tui.cluster import ChatRequested, ClusterScreen
from xb.tui.launch import LaunchScreen
from xb.tui.widgets import HelpScreen, help_text


class XbApp(App[None]):
    CSS_PATH = "xb.tcss"
    TITLE = "xb"
    # The help screen lists these with their tooltips (help_text): add a key here, and
    # it is in the help too.
    BINDINGS = [
        Binding(
            "c", "switch_mode('cluster')", "Cluster", tooltip="the cluster: workers and models"
        ),
        Binding(
            "a",
            "switch_mode('arena')",
            "Arena",
            tooltip="the arena: chat with two or three models at once",
        ),
        Binding("l", "launch", "Launch", tooltip="launch a model"),
        Binding("question_mark", "help", "Help", tooltip="this help"),
        Binding("q", "quit", "Quit", tooltip="quit"),
    ]

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        api_key: str | None = None,
        *,
        client: AsyncClient | None = None,
    ) -> None:
        super().__init__()
        self.client = client or AsyncClient(endpoint, api_key=api_key)
        self.cluster = ClusterScreen(self.client)
        self.arena = ArenaScreen(self.client)

    def on_mount(self) -> None:
        # Modes are built by callables; these return the one instance of each screen.
        self.add_mode("cluster", lambda: self.cluster)
        self.add_mode("arena", lambda: self.arena)
        self.switch_mode("cluster")

    async def on_unmount(self) -> None:
        await self.client.close()

    def action_launch(self) -> None:
        def launched(uid: str | None) -> None:
            if uid is not None:
                self.notify(f"model {uid} is ready")
                self.cluster.action_refresh()

        self.push_screen(LaunchScreen(self.client), launched)

    def action_help(self) -> None:
        sections: list[tuple[str, type[DOMNode]]] = [
            ("anywhere", type(self)),
            ("cluster", ClusterScreen),
            ("launch", LaunchScreen),
            ("arena", ArenaScreen),
        ]
        not_bindings = [
            (self.COMMAND_PALETTE_BINDING, "anywhere", "the command palette"),
            ("enter", "arena prompt", "send the message to every pane"),
        ]
        self.push_screen(HelpScreen(help_text(sections, not_bindings)))

    @on(ChatRequested)
    def chat_with(self, message: ChatRequested) -> None:
        self.switch_mode("arena")
        self.arena.use_model(message.uid)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Cluster", "Workers and models", lambda: self.switch_mode("cluster"))
        yield SystemCommand(
            "Arena", "Chat with models side by side", lambda: self.switch_mode("arena")
        )
        yield SystemCommand("Launch a model", "From the registry or a file", self.action_launch)
        yield SystemCommand("Add an arena pane", "Up to three", self.arena.action_add_pane)
        yield SystemCommand("Help", "Keys and screens", self.action_help)
