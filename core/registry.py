"""The model registry: families of models, each with specs that say which file to fetch.

A family is a JSON file validated by ``ModelFamily`` (the shape follows Xinference's
LLM family files, so specs written for it move over with few changes). Built-in families
live in ``families/`` beside this module; a user's own go to ``$XB_HOME/registrations``.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import msgspec

from xb.core import engines
from xb.core.errors import XbError
from xb.core.paths import safe_name
from xb.core.protocol import MAX_FAMILIES

log = logging.getLogger("xb.core.registry")

Ability = Literal["generate", "chat", "embed"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# Bits a weight takes in each quantization, to estimate memory before a file is fetched.
BITS_PER_WEIGHT = {
    "q2_k": 3.35,
    "q3_k_s": 3.5,
    "q3_k_m": 3.9,
    "q3_k_l": 4.3,
    "q4_0": 4.55,
    "q4_1": 5.0,
    "q4_k_s": 4.6,
    "q4_k_m": 4.85,
    "q5_0": 5.5,
    "q5_1": 6.0,
    "q5_k_s": 5.55,
    "q5_k_m": 5.7,
    "q6_k": 6.6,
    "q8_0": 8.5,
    "f16": 16.0,
    "bf16": 16.0,
    "fp16": 16.0,
    "f32": 32.0,
    "q3_k": 3.9,
    "q4_k": 4.85,
    "q5_k": 5.7,
    "iq3_m": 3.7,
    "iq4_xs": 4.25,
    "iq4_nl": 4.5,
}


class RegistryError(XbError):
    """A family spec that does not validate, or a lookup that finds nothing; says which."""


class Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One form of a family: a format, a size and its quantizations, and where its file is:
    on the hub (``model_id`` and the file name templates), on the worker (``model_uri``),
    or in an installed Python package (``python_package``, checked before the hub)."""

    model_format: str  # one an engine reads (xb.core.engines), by its canonical name
    model_size_in_billions: str  # "0_5", "7": Xinference writes fractions with "_"
    quantizations: list[str]
    model_id: str | None = None  # the hub repository, "owner/name"
    model_file_name_template: str | None = None  # with "{quantization}" in it
    model_uri: str | None = None  # a file (or a folder of them) on the worker instead
    python_package: str | None = None  # a distribution whose files include the model file
    model_revision: str = "main"
    model_file_name_split_template: str | None = None  # with "{quantization}" and "{part}"
    quantization_parts: dict[str, list[str]] = {}
    checksums: dict[str, str] = {}  # quantization -> sha256 of the (single) file
    model_hub: Literal["huggingface"] = "huggingface"

    def size(self) -> float:
        return float(self.model_size_in_billions.replace("_", "."))


class ModelFamily(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model_name: str
    model_description: str
    model_lang: list[str]
    model_ability: list[Ability]
    context_length: int
    model_specs: list[Spec]
    model_type: Literal["LLM", "embedding"] = "LLM"
    chat_template: str | None = None  # None: the one in the model file
    stop: list[str] = []
    stop_token_ids: list[int] = []
    version: int = 1


def _check(family: ModelFamily) -> ModelFamily:
    """Rules a struct cannot say; raise ``RegistryError`` naming the field."""
    if not re.match(_NAME, family.model_name):
        raise RegistryError(f"model_name {family.model_name!r} must match {_NAME}")
    if not family.model_specs:
        raise RegistryError("model_specs is empty")
    if "chat" in family.model_ability and "generate" not in family.model_ability:
        raise RegistryError("model_ability: a chat model also offers generate")
    if family.model_type == "embedding" and family.model_ability != ["embed"]:
        raise RegistryError("model_ability of an embedding model is ['embed']")
    for i, spec in enumerate(family.model_specs):
        where = f"model_specs[{i}]"
        if engines.file_format(spec.model_format) != spec.model_format:
            known = ", ".join(k.formats[0] for k in engines.ENGINES.values())
            raise RegistryError(
                f"{where}.model_format {spec.model_format!r} is not one xb runs ({known})"
            )
        _check_names(spec, where)
        if not re.match(r"^\d+(_\d+)?$", spec.model_size_in_billions):
            raise RegistryError(f"{where}.model_size_in_billions must look like '7' or '0_5'")
        if not spec.quantizations:
            raise RegistryError(f"{where}.quantizations is empty")
        if spec.model_uri is not None:
            if not Path(spec.model_uri).is_absolute():
                raise RegistryError(f"{where}.model_uri must be an absolute path on the worker")
            continue
        if "{quantization}" not in (spec.model_file_name_template or ""):
            raise RegistryError(f"{where}.model_file_name_template lacks '{{quantization}}'")
        if "/" not in (spec.model_id or ""):
            raise RegistryError(f"{where}.model_id must be 'owner/name' (or give model_uri)")
        for quantization in spec.quantization_parts:
            if quantization not in spec.quantizations:
                raise RegistryError(f"{where}.quantization_parts names unknown {quantization!r}")
            if spec.model_file_name_split_template is None:
                raise RegistryError(f"{where} has quantization_parts but no split template")
    return family


def _check_names(spec: Spec, where: str) -> None:
    """Fields that become file or folder names in the cache must each be one plain name:
    a quantization of '../../x' would otherwise write outside it."""
    for quantization in spec.quantizations:
        if not safe_name(quantization):
            raise RegistryError(f"{where}.quantizations: {quantization!r} {_ONE_NAME}")
    for quantization, parts in spec.quantization_parts.items():
        if not all(safe_name(part) for part in parts):
            raise RegistryError(f"{where}.quantization_parts[{quantization!r}]: parts {_ONE_NAME}")
    owner_name = (spec.model_id or "a/b").split("/")
    if len(owner_name) != 2 or not all(safe_name(x) for x in owner_name):
        raise RegistryError(f"{where}.model_id {spec.model_id!r} must be 'owner/name', {_ONE_NAME}")
    # A hub revision may be a branch such as refs/pr/1; each of its parts is one name.
    if not all(safe_name(x) for x in spec.model_revision.split("/")):
        raise RegistryError(f"{where}.model_revision {spec.model_revision!r}: parts {_ONE_NAME}")
    for field in ("model_file_name_template", "model_file_name_split_template"):
        template = getattr(spec, field)
        if template is None:
            continue
        example = template.replace("{quantization}", "q").replace("{part}", "1")
        if not safe_name(example):
            raise RegistryError(f"{where}.{field} {template!r}: file names {_ONE_NAME}")


_ONE_NAME = "must each be one file name (letters, digits, '._+-'; no '/', no '..')"


def parse_family(data: bytes | str) -> ModelFamily:
    """Validate one family from JSON; a ``RegistryError`` names the field at fault."""
    try:
        family = msgspec.json.decode(data, type=ModelFamily)
    except msgspec.ValidationError as exc:
        raise RegistryError(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise RegistryError(f"not JSON: {exc}") from exc
    return _check(family)


def builtin_families() -> dict[str, ModelFamily]:
    families: dict[str, ModelFamily] = {}
    folder = resources.files("xb.core").joinpath("families")
    if not folder.is_dir():
        return families
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            family = parse_family(entry.read_bytes())
            families[family.model_name] = family
    return families


class Registry:
    """Built-in families and the user's own, which persist under ``home`` (the broker's:
    facades read them from the broker, ``use``). ``home`` None keeps them in memory."""

    def __init__(self, home: Path | None) -> None:
        self._dir = home / "registrations" if home is not None else None
        self.builtin = builtin_families()
        self._transient: dict[str, ModelFamily] = {}  # registered with persist=False
        self._given: dict[str, ModelFamily] | None = None  # the broker's, in a facade

    def use(self, families: dict[str, ModelFamily]) -> None:
        """Take ``families`` as the registered ones (a facade, from its broker)."""
        self._given = families

    def custom(self) -> dict[str, ModelFamily]:
        if self._given is not None:
            return dict(self._given)
        families: dict[str, ModelFamily] = dict(self._transient)
        if self._dir is not None and self._dir.is_dir():
            for path in sorted(self._dir.glob("*.json")):
                try:
                    family = parse_family(path.read_bytes())
                except RegistryError as exc:  # written by hand, or by an xb with looser rules
                    log.warning("ignoring the registration %s: %s", path, exc)
                    continue
                families[family.model_name] = family
        return families

    def all(self) -> dict[str, ModelFamily]:
        return {**self.builtin, **self.custom()}

    def get(self, name: str) -> ModelFamily:
        family = self.all().get(name)
        if family is None:
            raise RegistryError(
                f"no model family named {name!r}; see xb list --all, or give model_path for "
                "a file on the worker"
            )
        return family

    def register(
        self, family: ModelFamily, *, overwrite: bool = False, persist: bool = True
    ) -> None:
        """Register ``family``; with ``persist`` False it lasts until the broker stops."""
        if family.model_name in self.builtin:
            raise RegistryError(
                f"{family.model_name!r} is a built-in family and cannot be replaced; "
                "register it under another model_name"
            )
        registered = self.custom()
        taken = family.model_name in registered
        if taken and not overwrite:
            raise RegistryError(f"{family.model_name!r} is already registered; unregister it first")
        if not taken and len(registered) >= MAX_FAMILIES:
            raise RegistryError(f"{MAX_FAMILIES} families are registered, the most; unregister one")
        self._transient.pop(family.model_name, None)
        if self._dir is None or not persist:
            self._drop_file(family.model_name)
            self._transient[family.model_name] = family
            return
        path = self._dir / f"{family.model_name}.json"
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(family)))
        tmp.replace(path)

    def unregister(self, name: str) -> None:
        if name in self.builtin:
            raise RegistryError(f"{name!r} is a built-in family and cannot be unregistered")
        if self._transient.pop(name, None) is not None:
            return
        if not self._drop_file(name):
            raise RegistryError(f"no registered family named {name!r}")

    def _drop_file(self, name: str) -> bool:
        if self._dir is None:
            return False
        path = self._dir / f"{name}.json"
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed


def pick_spec(
    family: ModelFamily, fmt: str | None, size: str | None, quantization: str | None
) -> tuple[Spec, str]:
    """The spec and quantization a launch asks for; unspecified choices take the first."""
    wanted_size = size.replace(".", "_") if size is not None else None
    specs = [
        s
        for s in family.model_specs
        if (fmt is None or s.model_format == engines.file_format(fmt))
        and (wanted_size is None or s.model_size_in_billions == wanted_size)
    ]
    if not specs:
        options = ", ".join(
            f"{s.model_format} {s.model_size_in_billions}B" for s in family.model_specs
        )
        raise RegistryError(
            f"{family.model_name!r} has no {fmt or ''} {size or ''}B spec; it has {options}"
        )
    for spec in specs:
        if quantization is None:
            return spec, spec.quantizations[0]
        # Hubs spell quantizations either way (q4_k_m, Q4_K_M); the file uses the spec's.
        same = [q for q in spec.quantizations if q.lower() == quantization.lower()]
        if same:
            return spec, same[0]
    known = sorted({q for s in specs for q in s.quantizations})
    raise RegistryError(
        f"{family.model_name!r} has no quantization {quantization!r}; it has {', '.join(known)}"
    )


def file_names(spec: Spec, quantization: str) -> list[str]:
    """The file, or the parts of a split file, in the order llama.cpp wants them."""
    parts = spec.quantization_parts.get(quantization)
    if parts:
        assert spec.model_file_name_split_template is not None
        return [
            spec.model_file_name_split_template.format(quantization=quantization, part=part)
            for part in parts
        ]
    return [(spec.model_file_name_template or "").format(quantization=quantization)]


def local_path(spec: Spec, quantization: str) -> str | None:
    """The file on the worker a spec names with ``model_uri``: the file itself, or its
    file name template inside the folder the uri names."""
    if spec.model_uri is None:
        return None
    if spec.model_file_name_template and not spec.model_uri.endswith((".gguf", ".bin")):
        return str(Path(spec.model_uri) / file_names(spec, quantization)[0])
    return spec.model_uri


def estimate_from_spec(spec: Spec, quantization: str, n_ctx: int) -> int:
    """Bytes before anything is downloaded: weights by quantization, a rough KV cache."""
    bits = BITS_PER_WEIGHT.get(quantization.lower(), 16.0)
    weights = spec.size() * 1e9 * bits / 8
    kv_cache = spec.size() * 1e9 * 0.0000625 * n_ctx  # ~0.5 MiB per 1k tokens per 1B params
    return int(weights + kv_cache + 256 * 1024 * 1024)
