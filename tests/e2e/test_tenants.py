"""Fair turns between tenants through the whole stack: a real facade, broker and worker,
one slot, and the OpenAI ``user`` field (without API keys) or the key's name (with them)
naming the tenant. The order requests finish in is the order they reached the slot."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import Stack, long_chat, next_line, wait_until

pytestmark = pytest.mark.e2e


def queued(stack: Stack) -> int:
    return int(httpx.get(stack.url + "/v1/models/e", headers=stack.headers()).json()["queued"])


def finishing_order(stack: Stack, alice: dict[str, Any], bob: dict[str, Any]) -> list[str]:
    """Alice holds the one slot with a long stream (4,000 tokens, held open until everyone
    waits: closing it cancels it) and sends three short requests; Bob sends one short one
    once hers wait. Who finished when, the long one ("alice-0") when it was closed."""
    done: list[str] = []

    def send(name: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        reply = httpx.post(
            stack.url + "/v1/chat/completions", json=body, headers=headers, timeout=120
        )
        assert reply.status_code == 200, reply.text
        done.append(name)

    holder = {**alice["body"], "max_tokens": 4000, "stream": True}
    with (
        ThreadPoolExecutor(4) as pool,
        httpx.Client(base_url=stack.url, headers=alice["headers"], timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=holder) as stream,
    ):
        lines = stream.iter_lines()  # kept: a collected iterator closes the stream
        assert next_line(lines).startswith("data: ")  # it runs on the slot
        for i in range(1, 4):
            pool.submit(send, f"alice-{i}", *alice.values())
            wait_until(lambda i=i: queued(stack) == i)  # arrival order is hers to keep
        assert not done
        pool.submit(send, "bob", *bob.values())
        # Bob waits too, or takes the slot from a batch request and is done.
        wait_until(lambda: queued(stack) == 4 or "bob" in done)
        done.append("alice-0")
        stream.close()  # the slot goes to the waiting requests, in the scheduler's order
    return done


def body(user: str, priority: str = "interactive") -> dict[str, Any]:
    return {**long_chat("e", max_tokens=32, stream=False), "user": user, "priority": priority}


@pytest.mark.parametrize(("scheduler", "bob_finishes"), [("fair", 1), ("fifo", 4)])
def test_a_lone_request_passes_another_users_backlog(
    make_stack: Callable[..., Stack], endless_model: Path, scheduler: str, bob_finishes: int
) -> None:
    stack = make_stack(1, "--scheduler", scheduler)
    stack.launch(model_name="e", model_path=str(endless_model), n_ctx=4096, n_parallel=1)
    alice = {"body": body("alice"), "headers": {}}
    bob = {"body": body("bob"), "headers": {}}
    done = finishing_order(stack, alice, bob)
    assert done.index("bob") == bob_finishes, done  # next after alice-0, or last


def test_the_keys_name_is_the_tenant(
    make_stack: Callable[..., Stack], endless_model: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    alice_key, bob_key = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"
    keys.write_text(f"{alice_key} admin alice\n{bob_key} inference bob\n")
    keys.chmod(0o600)
    stack = make_stack(1, "--api-keys-file", str(keys), api_key=alice_key)
    stack.launch(model_name="e", model_path=str(endless_model), n_ctx=4096, n_parallel=1)
    # Both name the same user: the keys, not the field, say who they are.
    alice = {"body": body("same"), "headers": {"Authorization": f"Bearer {alice_key}"}}
    bob = {"body": body("same"), "headers": {"Authorization": f"Bearer {bob_key}"}}
    done = finishing_order(stack, alice, bob)
    assert done.index("bob") == 1, done


def test_an_interactive_request_passes_batch_ones_of_the_same_user(
    make_stack: Callable[..., Stack], endless_model: Path
) -> None:
    stack = make_stack(1)
    stack.launch(model_name="e", model_path=str(endless_model), n_ctx=4096, n_parallel=1)
    batch = {"body": body("carol", "batch"), "headers": {}}
    chat = {"body": body("carol"), "headers": {}}
    done = finishing_order(stack, batch, chat)
    assert done.index("bob") == 0, done  # it preempted the batch request on the slot
