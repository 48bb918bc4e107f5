"""``xb``'s client commands, one module a concern, sharing ``shared.py``'s options and
output: ``app.py`` (chat, generate, launch, list, scale, terminate, cluster),
``registry.py`` (model families), ``cache.py`` (downloaded files), ``keys.py`` (API keys),
``usage.py`` (usage by tenant).
``xb.serve.cli`` adds the dashboard (``xb tui``)."""

from __future__ import annotations

from xb.client.cli.app import build

__all__ = ["build"]
