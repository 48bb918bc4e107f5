"""The cluster screen: workers, running models and who is using them (tenants with
requests running or waiting, and their tokens of the last ``RECENT`` seconds), refreshed
about once a second."""

from __future__ import annotations

import time
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from xb.client import AsyncClient, ClientError
from xb.tui.widgets import ConfirmScreen, memory_bar

WORKER_COLUMNS = (
    "Worker",
    "Status",
    "Heartbeat",
    "Memory used · free/total GiB",
    "Models",
    "Queue",
    "In flight",
)
MODEL_COLUMNS = (
    "UID",
    "Name",
    "Format",
    "Size",
    "Quant.",
    "Replicas",
    "Where",
    "State",
    "Req/s",
    "Tok/s",
)
TENANT_COLUMNS = ("Tenant", "Model", "Running", "Waiting", "Requests", "Tokens")
RECENT = 300.0  # seconds of usage the tenants table sums
SHARED = "(shared)"  # the tenant of requests without a key or a user field


class ClusterScreen(Screen[None]):
    BINDINGS = [
        Binding("t", "terminate", "Terminate", tooltip="terminate the selected model (asks first)"),
        Binding(
            "enter",
            "chat",
            "Chat",
            priority=True,
            tooltip="chat with the selected model in the arena",
        ),
        Binding("r", "refresh", "Refresh", tooltip="read the workers and models again"),
    ]

    def __init__(self, client: AsyncClient) -> None:
        super().__init__()
        self.client = client
        self._rates: dict[str, tuple[float, int, int]] = {}  # uid -> (when, served, tokens)
        self.models: dict[str, dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Workers", classes="section")
        yield DataTable(id="workers", cursor_type="row", zebra_stripes=True)
        yield Static("Models · t terminate · enter chat", classes="section")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield Static(f"Tenants · now, and the last {RECENT / 60:.0f} minutes", classes="section")
        yield DataTable(id="tenants", cursor_type="row", zebra_stripes=True)
        yield Static("", id="cluster-status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "xb · cluster"
        workers = self.query_one("#workers", DataTable)
        for column in WORKER_COLUMNS:
            workers.add_column(column, key=column)
        models = self.query_one("#models", DataTable)
        for column in MODEL_COLUMNS:
            models.add_column(column, key=column)
        tenants = self.query_one("#tenants", DataTable)
        for column in TENANT_COLUMNS:
            tenants.add_column(column, key=column)
        self.set_interval(1.0, self.action_refresh)
        self.action_refresh()
        models.focus()

    def action_refresh(self) -> None:
        self.refresh_data()

    @work(exclusive=True, group="cluster-refresh")
    async def refresh_data(self) -> None:
        status = self.query_one("#cluster-status", Static)
        try:
            workers = await self.client.get_workers_info()
            models = await self.client.list_models()
        except ClientError as exc:
            status.update(f"[red]{exc}[/red]")
            return
        try:
            worker_table = self.query_one("#workers", DataTable)
            model_table = self.query_one("#models", DataTable)
        except NoMatches:
            return  # the screen was closed while the answer was on its way
        status.update(f"{len(workers)} workers · {len(models)} models · {self.client.base_url}")
        self.models = models
        names = {w["worker_id"]: w["host"] for w in workers}
        _sync(worker_table, {w["worker_id"]: _worker_row(w) for w in workers})
        now = time.monotonic()
        rows = {}
        for uid, model in models.items():
            before = self._rates.get(uid, (now, model["served"], model["tokens"]))
            elapsed = max(now - before[0], 1e-6)
            rps = (model["served"] - before[1]) / elapsed if elapsed > 0.5 else 0.0
            tps = (model["tokens"] - before[2]) / elapsed if elapsed > 0.5 else 0.0
            self._rates[uid] = (now, model["served"], model["tokens"])
            rows[uid] = _model_row(model, names, rps, tps)
        _sync(model_table, rows)
        await self._refresh_tenants()

    async def _refresh_tenants(self) -> None:
        """Who uses what; a key without the admin scope may not ask, which the table says."""
        try:
            usage = await self.client.usage(since=RECENT)
        except ClientError as exc:
            status = getattr(exc, "status_code", None)
            usage = {"data": [], "active": []}
            if status not in (401, 403):
                self.notify(f"usage: {exc}", severity="warning", timeout=3)
        try:
            table = self.query_one("#tenants", DataTable)
        except NoMatches:
            return
        _sync(table, _tenant_rows(usage))

    def selected_model(self) -> str | None:
        table = self.query_one("#models", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return str(key.value) if key.value is not None else None

    def action_terminate(self) -> None:
        uid = self.selected_model()
        if uid is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.terminate(uid)

        self.app.push_screen(ConfirmScreen(f"Terminate model {uid}?"), answered)

    @work(group="cluster-terminate")
    async def terminate(self, uid: str) -> None:
        try:
            await self.client.terminate_model(uid)
            self.notify(f"terminated {uid}")
        except ClientError as exc:
            self.notify(str(exc), severity="error")
        self.action_refresh()

    def action_chat(self) -> None:
        uid = self.selected_model()
        if uid is not None:
            self.post_message(ChatRequested(uid))

    @on(DataTable.RowSelected, "#models")
    def row_selected(self) -> None:
        self.action_chat()


class ChatRequested(Message):
    """Open the arena with this model in its first pane."""

    def __init__(self, uid: str) -> None:
        super().__init__()
        self.uid = uid


def _worker_row(w: dict[str, Any]) -> tuple[str, ...]:
    mem = w["memory"]
    models = ", ".join(f"{r['model_uid']}" for r in w["replicas"]) or "-"
    age = w["heartbeat_age"]
    status = "alive" if age < 2.0 else "late"
    return (
        w["worker_id"],
        status,
        f"{age:.1f} s",
        memory_bar(mem["free"], mem["total"]),
        models,
        str(w["queue_depth"]),
        str(w["in_flight"]),
    )


def _model_row(m: dict[str, Any], hosts: dict[str, str], rps: float, tps: float) -> tuple[str, ...]:
    replicas = m["replicas"]
    ready = sum(r["state"] == "ready" for r in replicas)
    states = {r["state"] for r in replicas}
    state = "ready" if states == {"ready"} else ", ".join(sorted(states)) or "none"
    where = ", ".join(sorted({hosts.get(r["worker_id"], r["worker_id"]) for r in replicas}))
    size = (m.get("model_size_in_billions") or "-").replace("_", ".")
    return (
        m["id"],
        m["model_name"],
        m["model_format"],
        size,
        m.get("quantization") or "-",
        f"{ready}/{m['replica']}",
        where or "-",
        state,
        f"{rps:.1f}",
        f"{tps:.0f}",
    )


def _tenant_rows(usage: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """One row per tenant and model active now or in the usage's window, busiest first."""
    rows: dict[tuple[str, str], list[int]] = {}
    for active in usage["active"]:
        row = rows.setdefault((active["tenant"], active["model"]), [0, 0, 0, 0])
        row[0], row[1] = active["running"], active["waiting"]
    for used in usage["data"]:
        row = rows.setdefault((used["tenant"], used["model"]), [0, 0, 0, 0])
        row[2], row[3] = used["requests"], used["total_tokens"]
    ordered = sorted(rows.items(), key=lambda item: (-item[1][0] - item[1][1], -item[1][3]))
    return {
        f"{tenant}\n{model}": (tenant or SHARED, model, *(str(n) for n in counts))
        for (tenant, model), counts in ordered
    }


def _sync(table: DataTable[str], rows: dict[str, tuple[str, ...]]) -> None:
    """Update ``table`` in place to ``rows`` (keyed), so refreshing does not flicker."""
    for key in [str(k.value) for k in list(table.rows)]:
        if key not in rows:
            table.remove_row(key)
    columns = list(table.columns)
    for key, values in rows.items():
        if key in {str(k.value) for k in table.rows}:
            for column, value in zip(columns, values, strict=True):
                if table.get_cell(key, column) != value:
                    table.update_cell(key, column, value)
        else:
            table.add_row(*values, key=key)
