"""The registry, built from in-process fake plugins (no installed plugin is loaded)."""

from __future__ import annotations

import pytest

from fastvideo import registry
from fastvideo.attention.backends import SDPABackend
from fastvideo.errors import UnknownNameError
from fastvideo.interfaces import ModelFamily, TrainingAlgorithm
from fastvideo.plugins import plugin_infos
from fastvideo.testing import fake_plugins, plugin_module


class FakeFamily(ModelFamily):
    name = "fake-family"

    @classmethod
    def build_pipeline(cls, source, config):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class OtherFakeFamily(FakeFamily):
    pass


class SdpaImpostor(SDPABackend):
    name = "sdpa"


class FakeAlgorithm(TrainingAlgorithm):
    name = "fake-algo"

    def train_step(self, batch):  # type: ignore[no-untyped-def]
        return {}


def _info(dist: str):  # type: ignore[no-untyped-def]
    return next(i for i in plugin_infos() if i.dist == dist)


def test_builtins_register_through_the_hooks(isolated_plugins: None) -> None:
    reg = registry.get_registry()
    assert reg.names("attention_backend") == ["flash-attn", "fp8", "sage", "sdpa"]
    entry = reg.get("attention_backend", "sdpa")
    assert (entry.cls, entry.dist, entry.qualname) == (
        SDPABackend,
        "fastvideo-core",
        "fastvideo.attention.backends.SDPABackend",
    )
    assert reg.names("model_family") == []
    assert registry.get_registry() is reg
    assert registry.get_registry(reload=True) is not reg


def test_fake_plugin_registers_every_kind() -> None:
    plugin = plugin_module(
        "fake-plugin",
        fv_register_model_families=lambda: [FakeFamily],
        fv_register_training_algorithms=lambda: (FakeAlgorithm,),
    )
    with fake_plugins(plugin):
        reg = registry.get_registry()
        assert reg.get("model_family", "fake-family").dist == "fake-plugin"
        assert FakeAlgorithm in reg.classes("training_algorithm")  # beside the core's finetune and lora
        info = _info("fake-plugin")
        assert info.registered == {"model_family": ["fake-family"], "training_algorithm": ["fake-algo"]}
        assert info.broken is None
    assert "fake-family" not in registry.get_registry().names("model_family")  # forgotten after the block


def test_duplicate_name_rejects_the_later_plugin_naming_both() -> None:
    first = plugin_module("fake-first", fv_register_model_families=lambda: [FakeFamily])
    second = plugin_module("fake-second", fv_register_model_families=lambda: [OtherFakeFamily])
    with fake_plugins(first, second), pytest.warns(UserWarning, match="registered twice"):
        reg = registry.get_registry()
        assert reg.get("model_family", "fake-family").cls is FakeFamily
        broken = _info("fake-second").broken
        assert broken is not None
        assert "model family 'fake-family' is registered twice" in broken
        assert "test_registry.FakeFamily from fake-first 0+local" in broken
        assert "test_registry.OtherFakeFamily from fake-second 0+local" in broken
        assert reg.conflicts == [broken]
        assert _info("fake-first").broken is None


def test_plugin_cannot_take_a_builtin_name() -> None:
    impostor = plugin_module("fake-impostor", fv_register_attention_backends=lambda: [SdpaImpostor])
    with fake_plugins(impostor), pytest.warns(UserWarning):
        reg = registry.get_registry()
        assert reg.get("attention_backend", "sdpa").cls is SDPABackend
        assert _info("fastvideo-core").broken is None
        broken = _info("fake-impostor").broken
        assert broken is not None and "fastvideo-core" in broken and "fake-impostor" in broken


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda: [object()], "expected a class with a lower-kebab string attribute `name`"),
        (lambda: [type("Bad", (), {"name": "Not_Kebab"})], "got name='Not_Kebab'"),
        (lambda: FakeFamily, "returned <class"),  # a class instead of a list of classes
    ],
    ids=["not-a-class", "bad-name", "not-a-list"],
)
def test_invalid_registration_marks_the_plugin_broken(returned, message) -> None:  # type: ignore[no-untyped-def]
    bad = plugin_module("fake-bad", fv_register_model_families=returned)
    good = plugin_module("fake-good", fv_register_training_algorithms=lambda: [FakeAlgorithm])
    with fake_plugins(bad, good), pytest.warns(UserWarning):
        reg = registry.get_registry()
        broken = _info("fake-bad").broken
        assert broken is not None and message in broken and "fake-bad" in broken
        assert reg.names("model_family") == []
        assert "fake-algo" in reg.names("training_algorithm")


def test_raising_hook_marks_only_that_plugin_broken() -> None:
    def explode() -> list[type]:
        raise RuntimeError("no GPU kernels built")

    bad = plugin_module("fake-explodes", fv_register_attention_backends=explode)
    good = plugin_module("fake-good", fv_register_model_families=lambda: [FakeFamily])
    with fake_plugins(bad, good):
        reg = registry.get_registry()
        assert (
            _info("fake-explodes").broken
            == "fv_register_attention_backends raised RuntimeError: no GPU kernels built"
        )
        assert reg.names("model_family") == ["fake-family"]
        assert reg.names("attention_backend") == ["flash-attn", "fp8", "sage", "sdpa"]


def test_unknown_name_suggests_close_names(isolated_plugins: None) -> None:
    reg = registry.get_registry()
    with pytest.raises(UnknownNameError) as err:
        reg.get("attention_backend", "sdp")
    assert (
        str(err.value)
        == "Unknown attention backend 'sdp'. Available: flash-attn, fp8, sage, sdpa. Did you mean 'sdpa'?"
    )
    assert isinstance(err.value, ValueError)


def test_unknown_name_of_an_official_plugin_says_what_to_install(isolated_plugins: None) -> None:
    reg = registry.get_registry()
    with pytest.raises(
        UnknownNameError, match=r"'vsa' is provided by fastvideo-vsa \(pip install fastvideo-vsa\)"
    ):
        reg.get("attention_backend", "vsa")
    with pytest.raises(
        UnknownNameError, match=r"Unknown model family 'hunyuan'. Available: none. .*fastvideo-hunyuan"
    ):
        reg.get("model_family", "hunyuan")
    msg = registry.unknown_name_message("attention_backend", "flash-attn", ["sdpa"])
    assert msg.endswith("'flash-attn' is provided by flash-attn (pip install flash-attn).")


def test_model_family_image_files_default_is_the_image_itself() -> None:
    """``fv generate`` checks each file ``ModelFamily.image_files`` names; by default ``--image`` is one path."""
    from fastvideo.interfaces.model_family import ModelFamily

    assert ModelFamily.image_files("a;b@3.png") == ["a;b@3.png"]
