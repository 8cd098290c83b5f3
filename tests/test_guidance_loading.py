"""What the guidance loads: no text encoder when prompts come pre-encoded, no UNet or VAE in
prompt-expansion, the hub's fp16 variant for half precision. Tiny models built from configs."""

import shutil

import pytest
import torch
from torch import nn

from dreamfusion.guidance import stable_diffusion as sd
from dreamfusion.guidance.stable_diffusion import GuidanceConfig, StableDiffusionGuidance, TextEncoder


def modules(obj, seen=None) -> list[nn.Module]:
    """Every torch module an object holds, following the project's own objects it holds."""
    seen = set() if seen is None else seen
    found = []
    for value in vars(obj).values():
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, nn.Module):
            found.append(value)
        elif type(value).__module__.startswith("dreamfusion") and hasattr(value, "__dict__"):
            found += modules(value, seen)
    return found


def parameters(obj) -> int:
    return sum(p.numel() for m in modules(obj) for p in m.parameters())


@pytest.fixture
def loads(monkeypatch):
    """Names of the weighted model classes read with ``from_pretrained`` (diffusers and transformers)."""
    from diffusers.models.modeling_utils import ModelMixin
    from transformers import PreTrainedModel

    names = []
    for base in (ModelMixin, PreTrainedModel):
        original = base.from_pretrained.__func__

        def record(cls, *args, _original=original, **kwargs):
            names.append(cls.__name__)
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(base, "from_pretrained", classmethod(record))
    return names


def test_guidance_given_pre_encoded_prompts_loads_no_text_encoder(tiny_model, loads, monkeypatch):
    from transformers import CLIPTextModel

    cfg = GuidanceConfig(precision="32", model_key=str(tiny_model))
    full = StableDiffusionGuidance(cfg)
    text = sum(p.numel() for p in full.text.model.parameters())
    assert loads == ["CLIPTextModel", "UNet2DConditionModel", "AutoencoderKL"] and text > 0
    loads.clear()

    g = StableDiffusionGuidance(cfg, text_encoder=False)
    assert loads == ["UNet2DConditionModel", "AutoencoderKL"]
    held = modules(g)
    assert not any(isinstance(m, CLIPTextModel) for m in held)
    assert parameters(g) == parameters(full) - text == sum(p.numel() for m in (g.unet, g.vae) for p in m.parameters())
    print(f"guidance parameters: {parameters(full):,} with the text encoder, {parameters(g):,} without")
    assert g.tokenizer is None
    with pytest.raises(RuntimeError, match="without its text encoder"):
        g.encode_text(["a red cube"])


def test_nerf_sds_given_a_prompt_set_never_loads_a_text_encoder(tmp_path, tiny_overrides, monkeypatch):
    from dreamfusion.stages import cli, nerf_sds, prompt_expansion

    prompts = tmp_path / "prompts"
    assert cli.run(prompt_expansion.main, ["--output", str(prompts), *tiny_overrides, "model.prompt=a red cube"]) == 0

    def refuse(*args, **kwargs):
        raise AssertionError("nerf-sds given a prompt set loaded a text encoder")

    monkeypatch.setattr(TextEncoder, "__init__", refuse)
    built = []
    original = StableDiffusionGuidance.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(parameters(self))

    monkeypatch.setattr(StableDiffusionGuidance, "__init__", record)
    argv = ["--output", str(tmp_path / "run"), "--prompts", str(prompts), "--quiet", *tiny_overrides,
            "trainer.max_steps=1"]
    assert cli.run(nerf_sds.main, argv) == 0
    assert len(built) == 1 and built[0] > 0


def test_prompt_expansion_loads_the_tokenizer_and_text_encoder_only(tmp_path, tiny_model, tiny_overrides, loads):
    """A model folder whose UNet is corrupt and whose VAE is missing still encodes prompts, to the
    same embeddings as the intact model's: prompt-expansion reads neither."""
    from transformers import CLIPTextModel

    from dreamfusion.data.prompt_set import PromptSet
    from dreamfusion.stages import cli, prompt_expansion

    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    (broken / "unet" / "config.json").write_text("{ not json")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    shutil.rmtree(broken / "vae")
    rc = cli.run(prompt_expansion.main, ["--output", str(tmp_path / "prompts"), *tiny_overrides,
                                         f"model.guidance.model_key={broken}", "model.prompt=a red cube"])
    assert rc == 0
    assert loads == ["CLIPTextModel"]
    ps = PromptSet.load(tmp_path / "prompts")

    encoder = StableDiffusionGuidance.load_text_encoder(GuidanceConfig(precision="32", model_key=str(tiny_model)))
    assert [type(m) for m in modules(encoder)] == [CLIPTextModel]
    assert parameters(encoder) == sum(p.numel() for p in encoder.model.parameters())
    assert torch.allclose(encoder.encode_text([ps.views["front"]]), ps.embeddings["front"], atol=1e-6)


class _Hub:
    """Stands in for a model class's ``from_pretrained`` on a hub: records each request and has
    an fp16 variant for the subfolders in ``fp16``."""

    def __init__(self, fp16: set[str]):
        self.fp16, self.calls = fp16, []

    def loader(self, name: str):
        hub = self

        class Loader:
            @classmethod
            def from_pretrained(cls, key, subfolder, **kw):
                hub.calls.append((subfolder, kw.get("variant"), kw.get("torch_dtype")))
                if kw.get("variant") and subfolder not in hub.fp16:
                    raise OSError(f"{key} does not appear to have a file named {subfolder}/model.fp16.safetensors")
                return name

        return Loader


@pytest.mark.parametrize(
    "dtype, hub, fp16, calls",
    [
        (torch.float16, True, {"unet"}, [("unet", "fp16", torch.float16)]),
        (torch.float16, True, set(), [("unet", "fp16", torch.float16), ("unet", None, torch.float16)]),
        (torch.float32, True, {"unet"}, [("unet", None, torch.float32)]),
        (torch.bfloat16, True, {"unet"}, [("unet", None, torch.bfloat16)]),
        (torch.float16, False, {"unet"}, [("unet", None, torch.float16)]),  # a local folder has plain files
    ],
)
def test_fp16_variant_is_asked_for_half_precision_from_a_hub_id(dtype, hub, fp16, calls):
    fake = _Hub(fp16)
    assert sd.from_pretrained(fake.loader("UNet"), "org/model", "unet", dtype, hub) == "UNet"
    assert fake.calls == calls


def test_guidance_in_half_precision_reads_the_hub_fp16_variant_where_there_is_one(tiny_model, monkeypatch):
    """Every weighted component of a hub model (no network: from_pretrained is replaced) is asked
    for in its fp16 variant; one without it (here the text encoder) falls back to its plain weights."""
    import diffusers
    import transformers

    fake = _Hub({"unet", "vae"})
    real = {}
    for module, name in ((diffusers, "UNet2DConditionModel"), (diffusers, "AutoencoderKL"),
                         (transformers, "CLIPTextModel")):
        cls = getattr(module, name)
        real[name] = (cls, cls.from_pretrained.__func__)

        def from_pretrained(_cls, key, subfolder, _name=name, **kw):
            fake.loader(_name).from_pretrained(key, subfolder, **kw)  # records; raises without the variant
            kw.pop("variant", None)
            owner, original = real[_name]
            return original(owner, str(tiny_model), subfolder=subfolder, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(from_pretrained))
    for name in ("DDPMScheduler",):
        cls = getattr(diffusers, name)
        original = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained",
                            classmethod(lambda c, key, _o=original, **kw: _o(c, str(tiny_model), **kw)))
    original_tok = transformers.AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        classmethod(lambda c, key, _o=original_tok, **kw: _o(c, str(tiny_model), **kw)))
    monkeypatch.setattr(sd, "model_dtype", lambda precision, device: torch.float16)  # as on a GPU

    g = StableDiffusionGuidance(GuidanceConfig(precision="16", model_key="org/sd-like"))
    assert fake.calls == [
        ("text_encoder", "fp16", torch.float16),
        ("text_encoder", None, torch.float16),
        ("unet", "fp16", torch.float16),
        ("vae", "fp16", torch.float16),
    ]
    assert g.unet.dtype == g.vae.dtype == g.text.model.dtype == torch.float16
