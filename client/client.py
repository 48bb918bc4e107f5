"""The blocking Python client, shaped after Xinference's RESTful client.

from xb.client import Client
client = Client("http://127.0.0.1:9997")
uid = client.launch_model("xb-demo")
model = client.get_model(uid)
print(model.chat([{"role": "user", "content": "Hi"}])["choices"][0]["message"])
for chunk in model.chat([...], generate_config={"stream": True}): ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from xb.client import calls
from xb.client.calls import Call
from xb.client.errors import connection_error, status_error
from xb.core.settings import DEFAULT_ENDPOINT


class Client:
    def __init__(
        self, base_url: str = DEFAULT_ENDPOINT, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(**calls.http_options(self.base_url, api_key, timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Call) -> Any:
        if calls.streaming(call):
            return self._stream(call)
        try:
            response = self._http.request(call.method, call.path, json=call.json)
        except httpx.TransportError as exc:
            raise connection_error(self.base_url, exc) from exc
        return calls.answer(call, response)

    def _stream(self, call: Call) -> Iterator[dict[str, Any]]:
        # Sent before the first chunk is asked for, so an error surfaces here and now.
        request = self._http.build_request(call.method, call.path, json=call.json)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise connection_error(self.base_url, exc) from exc
        if response.status_code >= 400:
            response.read()
            response.close()
            raise status_error(response)

        def chunks() -> Iterator[dict[str, Any]]:
            try:
                for line in response.iter_lines():
                    chunk = calls.read_line(call, line)
                    if chunk is not None:
                        yield chunk
            except httpx.TransportError as exc:
                raise connection_error(self.base_url, exc) from exc
            finally:
                response.close()

        return chunks()

    # ---- models -----------------------------------------------------------------------

    def launch_model(self, model_name: str, **fields: Any) -> str:
        """Launch and return the model uid; fields as in ``POST /v1/models`` (model_path,
        model_uid, model_type, replica, n_ctx, worker_ip, request_limits, wait_ready, ...)."""
        return str(self._run(calls.launch(model_name, fields)))

    def list_models(self) -> dict[str, dict[str, Any]]:
        """Running models by uid."""
        return dict(self._run(calls.list_models()))

    def describe_model(self, model_uid: str) -> dict[str, Any]:
        return dict(self._run(calls.describe(model_uid)))

    def terminate_model(self, model_uid: str) -> None:
        self._run(calls.terminate(model_uid))

    def get_launch_model_progress(self, model_uid: str) -> dict[str, Any]:
        return dict(self._run(calls.progress(model_uid)))

    def cancel_launch_model(self, model_uid: str) -> None:
        self._run(calls.cancel(model_uid))

    def scale_model(self, model_uid: str, replica: int) -> dict[str, Any]:
        """Add or remove replicas until the model has ``replica`` of them."""
        return dict(self._run(calls.scale(model_uid, replica)))

    def get_workers_info(self) -> list[dict[str, Any]]:
        return list(self._run(calls.cluster()))

    def usage(
        self, since: float | None = None, start: float | None = None, end: float | None = None
    ) -> dict[str, Any]:
        """Usage by tenant and model over the last ``since`` seconds (24 hours by
        default), or from ``start`` to ``end`` (Unix seconds), and who is active now."""
        return dict(self._run(calls.usage(since, start, end)))

    def list_model_registrations(self, model_type: str = "LLM") -> list[dict[str, Any]]:
        """The registry: built-in and registered families of ``model_type``."""
        return list(self._run(calls.registrations(model_type)))

    def get_model_registration(self, model_type: str, model_name: str) -> dict[str, Any]:
        return dict(self._run(calls.registration(model_type, model_name)))

    def register_model(self, model_type: str, model: str, persist: bool = True) -> None:
        """Register a family given as JSON text (the format of ``xb.core.registry``)."""
        self._run(calls.register(model_type, model, persist))

    def unregister_model(self, model_type: str, model_name: str) -> None:
        self._run(calls.unregister(model_type, model_name))

    def get_model(self, model_uid: str) -> ModelHandle:
        self.describe_model(model_uid)  # fails clearly for an unknown uid
        return ModelHandle(self, model_uid)


class ModelHandle:
    """One running model. Pass ``generate_config={"stream": True, ...}`` to stream, and
    ``on_queued`` to hear the stream's place in line (1: next) while it waits for a slot."""

    def __init__(self, client: Client, model_uid: str) -> None:
        self._client = client
        self.model_uid = model_uid

    def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        generate_config: dict[str, Any] | None = None,
        *,
        on_queued: calls.OnQueued | None = None,
    ) -> Any:
        """A chat.completion, or an iterator of chat.completion.chunk when streaming."""
        call = calls.chat(self.model_uid, messages, tools, generate_config, on_queued)
        return self._client._run(call)

    def generate(
        self,
        prompt: str,
        generate_config: dict[str, Any] | None = None,
        *,
        on_queued: calls.OnQueued | None = None,
    ) -> Any:
        """A text_completion, or an iterator of its chunks when streaming."""
        return self._client._run(calls.generate(self.model_uid, prompt, generate_config, on_queued))

    def create_embedding(self, input: str | list[str], **fields: Any) -> dict[str, Any]:
        return dict(self._client._run(calls.embed(self.model_uid, input, fields)))
