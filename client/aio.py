"""The asyncio Python client: ``Client``'s methods as coroutines, streams as async iterators.

Close a stream you leave early (``async with contextlib.aclosing(stream)``): closing it
closes the connection, which stops the generation on the worker at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from xb.client import calls
from xb.client.calls import Call
from xb.client.errors import connection_error, status_error
from xb.core.settings import DEFAULT_ENDPOINT


class AsyncClient:
    def __init__(
        self, base_url: str = DEFAULT_ENDPOINT, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(**calls.http_options(self.base_url, api_key, timeout))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, call: Call) -> Any:
        if calls.streaming(call):
            return await self._stream(call)
        try:
            response = await self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise connection_error(self.base_url, exc) from exc
        return calls.answer(call, response)

    async def _stream(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        request = self._http.build_request(call.method, call.path, json=call.json)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise connection_error(self.base_url, exc) from exc
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise status_error(response)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            try:
                async for line in response.aiter_lines():
                    chunk = calls.read_line(call, line)
                    if chunk is not None:
                        yield chunk
            except httpx.TransportError as exc:
                raise connection_error(self.base_url, exc) from exc
            finally:
                await response.aclose()

        return chunks()

    async def launch_model(self, model_name: str, **fields: Any) -> str:
        return str(await self._run(calls.launch(model_name, fields)))

    async def list_models(self) -> dict[str, dict[str, Any]]:
        return dict(await self._run(calls.list_models()))

    async def describe_model(self, model_uid: str) -> dict[str, Any]:
        return dict(await self._run(calls.describe(model_uid)))

    async def terminate_model(self, model_uid: str) -> None:
        await self._run(calls.terminate(model_uid))

    async def get_launch_model_progress(self, model_uid: str) -> dict[str, Any]:
        return dict(await self._run(calls.progress(model_uid)))

    async def cancel_launch_model(self, model_uid: str) -> None:
        await self._run(calls.cancel(model_uid))

    async def scale_model(self, model_uid: str, replica: int) -> dict[str, Any]:
        return dict(await self._run(calls.scale(model_uid, replica)))

    async def get_workers_info(self) -> list[dict[str, Any]]:
        return list(await self._run(calls.cluster()))

    async def usage(
        self, since: float | None = None, start: float | None = None, end: float | None = None
    ) -> dict[str, Any]:
        return dict(await self._run(calls.usage(since, start, end)))

    async def list_model_registrations(self, model_type: str = "LLM") -> list[dict[str, Any]]:
        return list(await self._run(calls.registrations(model_type)))

    async def get_model_registration(self, model_type: str, model_name: str) -> dict[str, Any]:
        return dict(await self._run(calls.registration(model_type, model_name)))

    async def register_model(self, model_type: str, model: str, persist: bool = True) -> None:
        await self._run(calls.register(model_type, model, persist))

    async def unregister_model(self, model_type: str, model_name: str) -> None:
        await self._run(calls.unregister(model_type, model_name))

    async def get_model(self, model_uid: str) -> AsyncModelHandle:
        await self.describe_model(model_uid)
        return AsyncModelHandle(self, model_uid)


class AsyncModelHandle:
    def __init__(self, client: AsyncClient, model_uid: str) -> None:
        self._client = client
        self.model_uid = model_uid

    async def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        generate_config: dict[str, Any] | None = None,
        *,
        on_queued: calls.OnQueued | None = None,
    ) -> Any:
        call = calls.chat(self.model_uid, messages, tools, generate_config, on_queued)
        return await self._client._run(call)

    async def generate(
        self,
        prompt: str,
        generate_config: dict[str, Any] | None = None,
        *,
        on_queued: calls.OnQueued | None = None,
    ) -> Any:
        call = calls.generate(self.model_uid, prompt, generate_config, on_queued)
        return await self._client._run(call)

    async def create_embedding(self, input: str | list[str], **fields: Any) -> dict[str, Any]:
        return dict(await self._client._run(calls.embed(self.model_uid, input, fields)))
