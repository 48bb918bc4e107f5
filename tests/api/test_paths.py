"""Files a launch or a registration names stay inside the model folders, and a refusal
does not tell whether the file exists; registry names cannot climb out of the cache."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A folder no model folder holds, with a real model file in it."""
    folder = tmp_path_factory.mktemp("outside")
    shutil.copy(tiny_model, folder / "real.gguf")
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # no hub: nothing may be fetched
        stack = Stack(home=tmp_path_factory.mktemp("xbhome"), model_dirs=[models_dir])
        with stack.running():
            yield stack


def launch(stack: Stack, name: str, path: str) -> httpx.Response:
    body = {"model_name": name, "model_path": path, "n_ctx": 256}
    return httpx.post(stack.url + "/v1/models", json=body, timeout=60)


def refusal(response: httpx.Response, *said: str) -> str:
    """The message of a 400, with the names the request gave taken out."""
    assert response.status_code == 400, response.text
    message = str(response.json()["error"]["message"])
    for text in said:
        assert text in message
        message = message.replace(text, "<given>")
    return message


def test_a_file_outside_reads_as_a_missing_one(stack: Stack, outside: Path) -> None:
    existing = str(outside / "real.gguf")
    missing = str(outside / "missing.gguf")
    messages = {
        refusal(launch(stack, "a", existing), existing, "'a'"),
        refusal(launch(stack, "b", missing), missing, "'b'"),
        refusal(launch(stack, "c", "/etc/passwd"), "/etc/passwd", "'c'"),
        refusal(launch(stack, "d", "/etc"), "/etc", "'d'"),
    }
    assert len(messages) == 1, messages
    assert "--model-dir" in messages.pop()
    assert httpx.get(stack.url + "/v1/models").json()["data"] == []


def test_a_path_cannot_leave_a_model_folder(
    stack: Stack, models_dir: Path, outside: Path, tmp_path: Path
) -> None:
    link = models_dir / f"link-to-outside-{tmp_path.name}.gguf"
    link.symlink_to(outside / "real.gguf")
    climbing = f"{models_dir}/../{outside.name}/real.gguf"
    try:
        for name, path in [("link", str(link)), ("climbing", climbing)]:
            refusal(launch(stack, name, path), path, "outside the model folders")
    finally:
        link.unlink()


def test_the_model_folder_under_xb_home_needs_no_flag(stack: Stack, tiny_model: Path) -> None:
    (stack.home / "models").mkdir(exist_ok=True)
    mine = shutil.copy(tiny_model, stack.home / "models" / "mine.gguf")
    response = launch(stack, "mine", str(mine))
    assert response.status_code == 200, response.text
    assert httpx.delete(stack.url + "/v1/models/mine", timeout=30).status_code == 200


def family(**spec: Any) -> dict[str, Any]:
    return {
        "model_name": "named",
        "model_ability": ["generate", "chat"],
        "context_length": 2048,
        "model_specs": [
            {
                "model_format": "gguf",
                "model_size_in_billions": "0_01",
                "quantizations": ["f32"],
                "model_id": "owner/repo",
                "model_file_name_template": "named-{quantization}.gguf",
                **spec,
            }
        ],
    }


def register(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.url + "/v1/model_registrations/LLM",
        json={"model": json.dumps(body), "persist": True},
        timeout=10,
    )


def test_a_registration_names_files_inside_the_model_folders_only(
    stack: Stack, outside: Path, models_dir: Path
) -> None:
    existing, missing = str(outside / "real.gguf"), str(outside / "missing.gguf")
    messages = {
        refusal(register(stack, family(model_uri=existing)), existing),
        refusal(register(stack, family(model_uri=missing)), missing),
        refusal(register(stack, family(model_uri=str(outside))), str(outside)),
    }
    assert len(messages) == 1, messages
    # Xinference's file:// form is the same path.
    refusal(register(stack, family(model_uri=f"file://{existing}")), existing)
    assert register(stack, family(model_uri=str(models_dir))).status_code == 200
    assert httpx.delete(stack.url + "/v1/model_registrations/LLM/named").status_code == 200


def escaped(home: Path) -> list[Path]:
    """What a name climbing out of ``home`` might have written, at any height."""
    return [p / "elsewhere" for p in [home, *home.parents] if (p / "elsewhere").exists()]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"quantizations": ["../../../../elsewhere/x"]}, "quantizations"),
        ({"quantizations": ["f32", "q4/../../x"]}, "quantizations"),
        ({"model_file_name_template": "../../elsewhere/{quantization}.gguf"}, "template"),
        ({"model_file_name_template": "/elsewhere/{quantization}.gguf"}, "template"),
        ({"model_id": "owner/../../elsewhere"}, "model_id"),
        ({"model_id": "../elsewhere"}, "model_id"),
        ({"model_revision": "../../elsewhere"}, "model_revision"),
        ({"quantization_parts": {"f32": ["../elsewhere-1.gguf"]}}, "quantization_parts"),
    ],
)
def test_registry_names_that_would_become_paths_are_refused(
    stack: Stack, spec: dict[str, Any], field: str
) -> None:
    response = register(stack, family(**spec))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "model" and field in error["message"]
    assert not (stack.home / "registrations" / "named.json").exists()
    assert escaped(stack.home) == []


def test_a_hand_written_registration_that_climbs_out_is_ignored(stack: Stack) -> None:
    folder = stack.home / "registrations"
    folder.mkdir(exist_ok=True)
    written = folder / "climber.json"
    climber = family(quantizations=["../../../../elsewhere/x"]) | {"model_name": "climber"}
    written.write_text(json.dumps(climber))
    try:
        listed = httpx.get(stack.url + "/v1/model_registrations/LLM").json()
        assert "climber" not in [f["model_name"] for f in listed]
        response = httpx.post(stack.url + "/v1/models", json={"model_name": "climber"}, timeout=30)
        assert response.status_code == 400 and "climber" in response.text
        # A quantization the family does not list is refused before anything is fetched.
        builtin = {"model_name": "smollm2-instruct", "quantization": "../../../../elsewhere/x"}
        response = httpx.post(stack.url + "/v1/models", json=builtin, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "model_name"
        assert escaped(stack.home) == []
        assert not (stack.home / "cache").exists() or not any((stack.home / "cache").iterdir())
    finally:
        written.unlink()
