"""A small synchronous client for the xb REST API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from xb.settings import DEFAULT_ENDPOINT


class ClientError(Exception):
    """The API answered with an error, or could not be reached; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(
        self, base_url: str = DEFAULT_ENDPOINT, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(
                f"cannot reach xb at {self.base_url} ({exc}); is xb-broker running?"
            ) from exc
        if response.status_code >= 400:
            raise ClientError(_error_message(response), response.status_code)
        return response.json()

    def launch_model(self, model_name: str, **fields: Any) -> str:
        body = {"model_name": model_name, **{k: v for k, v in fields.items() if v is not None}}
        return str(self._request("POST", "/v1/models", json=body)["model_uid"])

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/models")["data"])

    def describe_model(self, model_uid: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/models/{model_uid}"))

    def terminate_model(self, model_uid: str) -> None:
        self._request("DELETE", f"/v1/models/{model_uid}")

    def cluster_info(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/cluster/info"))

    def chat(self, model_uid: str, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        body = {"model": model_uid, "messages": messages, **params, "stream": False}
        return dict(self._request("POST", "/v1/chat/completions", json=body))

    def chat_stream(
        self, model_uid: str, messages: list[dict[str, str]], **params: Any
    ) -> Iterator[str]:
        """Yield the text of each streamed chunk."""
        body = {"model": model_uid, "messages": messages, **params, "stream": True}
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(_error_message(response), response.status_code)
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise ClientError(chunk["error"].get("message", "stream failed"))
                    for choice in chunk.get("choices", []):
                        text = choice.get("delta", {}).get("content")
                        if text:
                            yield text
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach xb at {self.base_url} ({exc})") from exc


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return f"{error.get('message', response.text)} (HTTP {response.status_code})"
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"
