"""`grounding fit` end to end on CPU: tiny random LLaVA, generated COCO data, LoRA + region projector."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from eval.cli import main
from grounding.compat import is_activation_checkpointing
from tiny_vlm import make_tiny_llava, write_fit_set


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_reg_dir):
    root = tmp_path_factory.mktemp("fit")
    write_fit_set(root, num_images=4)
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 6, "enable_progress_bar": True,
                    "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root / "logs"), "name": "run"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "every_n_train_steps": 3,
                                                 "save_top_k": -1, "filename": "{step}"}}]},
        "model": {"vlm": str(root / "vlm"), "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "learning_rate": 1e-2,
                  "export_dir": str(root / "adapter"),
                  "regions": {"num_regions": 2, "tower": tiny_reg_dir, "tower_short_side": 32, "projector_hidden": 16,
                              "object_dino": {"k": 2, "restarts": 2}}},
        "data": {"image_root": str(root / "images"), "instances": str(root / "instances.json"), "batch_size": 2,
                 "cache_dir": str(root / "cache")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_fit_resume_and_export(setup, tmp_path, capsys):
    root = setup
    assert main(["fit", "--config", str(root / "config.yaml")]) == 0
    bar = capsys.readouterr()
    assert "step" in bar.out + bar.err and "6/6" in bar.out + bar.err and "/-2" not in bar.out + bar.err
    rows = list(csv.DictReader((root / "logs" / "run" / "version_0" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2])
    assert [float(r["train/lr"]) for r in rows if r.get("train/lr")] == pytest.approx([1e-2] * 6)
    assert len([r for r in rows if r.get("train/tokens_per_s") and float(r["train/tokens_per_s"]) > 0]) == 6

    mid = torch.load(root / "ckpt" / "step=3.ckpt", weights_only=False)
    final = torch.load(root / "ckpt" / "step=6.ckpt", weights_only=False)
    keys = list(final["state_dict"])
    assert keys and all("lora_" in k or "region_projector" in k for k in keys)
    assert any("region_projector" in k for k in keys) and any("lora_" in k for k in keys)
    assert not any("vision_tower" in k and "lora" in k for k in keys)  # LoRA on the language model only
    assert mid["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] < 11  # mid-epoch

    from lightning_modules.cli import make_cli

    # no logger and no callbacks: Lightning's default ModelCheckpoint and the CLI's config.yaml go to
    # default_root_dir (the cwd when unset), so point it at tmp_path
    cli = make_cli(["--config", str(root / "config.yaml"), "--trainer.logger=false", "--trainer.callbacks=null",
                    f"--trainer.default_root_dir={tmp_path / 'resume'}",
                    f"--model.export_dir={tmp_path / 'adapter2'}"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(root / "ckpt" / "step=3.ckpt"))
    resumed = cli.model.trainable_state_dict()
    assert set(resumed) == set(final["state_dict"])
    for key, value in final["state_dict"].items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6)
    assert cli.datamodule.skipped == 2  # the missing image's records (one object: one yes, one no)

    # trainable-only checkpoints load strictly: a missing trained weight or a stray key is an error naming it
    trained_key = next(k for k in final["state_dict"] if "lora_" in k)
    partial = {k: v for k, v in final["state_dict"].items() if k != trained_key}
    with pytest.raises(RuntimeError, match="Missing key"):
        cli.model.load_state_dict(partial, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        cli.model.load_state_dict({**final["state_dict"], "model.stray.weight": torch.zeros(1)}, strict=True)
    cli.model.load_state_dict(final["state_dict"], strict=True)

    # RegionGrounding.save_pretrained() after training saves the projector the model trained, not the initial one
    from grounding.region_tokens import RegionGrounding

    cli.model.grounding.save_pretrained(tmp_path / "grounding")
    saved = RegionGrounding.from_pretrained(tmp_path / "grounding").projector.state_dict()
    wrapper = cli.model.model.base_model.model.region_projector
    for key, value in wrapper.modules_to_save["default"].state_dict().items():
        torch.testing.assert_close(saved[key], value)
    assert any(not torch.equal(saved[k], v) for k, v in wrapper.original_module.state_dict().items())
    assert (tmp_path / "resume" / "config.yaml").exists()
    assert list((tmp_path / "resume" / "checkpoints").glob("*.ckpt"))

    # the exported adapter (from the uninterrupted CLI run) reloads onto a stock model with identical outputs
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    base = LlavaForConditionalGeneration.from_pretrained(root / "vlm").eval()
    processor = AutoProcessor.from_pretrained(root / "vlm")
    grounding = RegionGrounding.from_pretrained(root / "adapter")
    grounding.attach(base, processor)
    reloaded = PeftModel.from_pretrained(base, root / "adapter" / "lora").eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a dog ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(root / "images" / "1.jpg")
    inputs = cli.model.processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        expected = cli.model.model.eval()(**inputs).logits  # the resumed run ends at the same weights
        got = reloaded(**processor(images=[image], text=[text], return_tensors="pt")).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert Path(root / "adapter" / "lora" / "adapter_model.safetensors").exists()

    # lora/'s processor is the plain model's (attach adds the region tokens again), from both export paths; loaded as
    # a plain VLM a region-token LoRA is refused (it would run without its region tokens), with the way to run it
    from grounding.vlm import load_vlm
    from grounding.weights import WeightsNotFoundError

    plain = AutoProcessor.from_pretrained(root / "vlm").num_additional_image_tokens
    cli.model.export(tmp_path / "sharded", state=cli.model.trainable_state_dict())
    for lora in (root / "adapter" / "lora", tmp_path / "sharded" / "lora"):
        assert AutoProcessor.from_pretrained(lora).num_additional_image_tokens == plain
        with pytest.raises(WeightsNotFoundError, match="region-token LoRA.*--methods region-tokens"):
            load_vlm(str(lora), "float32", "cpu")
    assert cli.model.processor.num_additional_image_tokens == plain + 2  # the live, attached processor is untouched


def test_a_missing_vlm_is_one_line_and_exit_2(setup, tmp_path, capsys):
    code = main(["fit", "--config", str(setup / "config.yaml"), f"--model.vlm={tmp_path / 'nowhere'}",
                 f"--model.export_dir={tmp_path / 'adapter'}", "--trainer.logger=false", "--trainer.callbacks=null",
                 f"--trainer.default_root_dir={tmp_path / 'root'}"])
    err = capsys.readouterr().err
    # (an earlier test's logging handler may print "--- Logging error ---" into err: pytest's closed capture stream)
    assert code == 2 and err.rstrip().splitlines()[-1].startswith("grounding fit: error: cannot load VLM: no such "
                                                                  "directory")
    assert "WeightsNotFoundError" not in err  # no traceback of the error itself
    assert not (tmp_path / "adapter").exists()


def test_a_file_missing_once_training_ran_keeps_its_traceback(setup, tmp_path, monkeypatch):
    """Only errors before the first batch (settings: model, tower, data) are one line; later it is a bug or a file
    removed mid-run, and its traceback is the useful part."""
    from lightning_modules.module import RegionTokensModule

    def broken_step(self, batch, batch_idx):
        open(tmp_path / "gone.json").close()

    monkeypatch.setattr(RegionTokensModule, "training_step", broken_step)
    with pytest.raises(FileNotFoundError, match="gone.json"):
        main(["fit", "--config", str(setup / "config.yaml"), f"--model.export_dir={tmp_path / 'adapter'}",
              "--trainer.logger=false", "--trainer.callbacks=null", f"--trainer.default_root_dir={tmp_path / 'root'}"])


def test_defaults_are_a_step_progress_bar_and_a_csv_logger(setup, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from lightning_modules.cli import make_cli
    from lightning_modules.progress import StepProgressBar

    cli = make_cli(["--config", str(setup / "config.yaml"), "--trainer.logger=null", "--trainer.callbacks=null",
                    f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.trainer.progress_bar_callback, StepProgressBar)
    assert isinstance(cli.trainer.logger, CSVLogger) and Path(cli.trainer.logger.save_dir) == tmp_path


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(setup):
    from grounding.region_tokens import RegionConfig
    from lightning_modules.conversation import ConversationCollator, tokenize_batch
    from lightning_modules.module import RegionTokensModule
    from tiny_vlm import photos

    conversation = [{"from": "human", "value": "<image>\nis there a dog ?"}, {"from": "gpt", "value": "yes"},
                    {"from": "human", "value": "is there a cat ?"}, {"from": "gpt", "value": "no"}]
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation
        module = RegionTokensModule(vlm=str(setup / "vlm"), regions=RegionConfig(num_regions=0), lora_r=4,
                                    lora_dropout=0.0, gradient_checkpointing=checkpointing)
        module.configure_model()
        assert is_activation_checkpointing(module.model) == checkpointing
        tokens = tokenize_batch({"conversations": [conversation]}, module.processor)
        batch = ConversationCollator(module.processor)([{"input_ids": tokens["input_ids"][0],
                                                         "labels": tokens["labels"][0], "image": photos(1)[0]}])
        loss = module.answer_loss(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}))
    (loss, grads), (again, grads_again) = results
    torch.testing.assert_close(again, loss)
    assert grads and set(grads) == set(grads_again)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_again[name], grad, rtol=1e-5, atol=1e-7)


def test_every_train_yaml_validates(tmp_path):
    from lightning_modules.cli import make_cli

    for path in sorted(Path(__file__).parents[2].glob("configs/train/*.yaml")):
        cli = make_cli(["--config", str(path), "--trainer.accelerator=cpu", "--trainer.devices=1",
                        "--trainer.precision=32-true", "--trainer.logger=false",
                        f"--trainer.default_root_dir={tmp_path / path.stem}"], run=False)
        regions = cli.model.regions_config
        assert regions.num_regions >= 0 and cli.model.hparams.lora_r > 0, path
        assert cli.datamodule.hparams.batch_size >= 1, path


def test_answer_loss_equals_the_models_own_loss():
    """The labelled-positions-only loss is the model's causal-LM loss, to float precision."""
    from lightning_modules.module import RegionTokensModule

    model, processor = make_tiny_llava()
    module = RegionTokensModule(vlm="unused", regions={"num_regions": 0})
    module.model = model.eval()
    image = Image.fromarray((np.random.default_rng(1).random((40, 56, 3)) * 255).astype(np.uint8))
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
                                           add_generation_prompt=True) + a
             for t, a in (("is there a dog ?", "yes"), ("is there a red car on the table ?", "no not a car"))]
    batch = dict(processor(images=[image, image], text=texts, return_tensors="pt", padding=True, padding_side="right"))
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    with torch.no_grad():
        torch.testing.assert_close(module.answer_loss(batch), model(**batch).loss, rtol=1e-5, atol=1e-6)
    batch["labels"] = torch.full_like(labels, -100)
    with pytest.raises(ValueError, match="no answer tokens"):
        module.answer_loss(batch)


def test_grouped_questions_pay_the_image_once():
    from lightning_modules.training_records import grounded_questions

    instances = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
                 "categories": [{"id": i, "name": n} for i, n in enumerate(["dog", "cat", "car", "bus", "cup"], 1)],
                 "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 3},
                                 {"image_id": 2, "category_id": 2}]}
    single = grounded_questions(instances, per_image=3, seed=0)
    grouped = grounded_questions(instances, per_image=3, seed=0, grouped=True)
    assert len(single) == 6 and len(grouped) == 2
    turns = grouped[0]["conversations"]
    assert len(turns) == 8 and sum("<image>" in t["value"] for t in turns) == 1 and turns[0]["value"].startswith("<image>\n")
    answers = {t["value"].split("a ")[-1][:-len(" in the image?")]: a["value"] for t, a in zip(turns[::2], turns[1::2])}
    assert answers["dog"] == "Yes" and answers["car"] == "Yes" and sorted(answers.values()).count("No") == 2


def test_balanced_negatives_make_the_category_name_uninformative():
    """With a frequency skew, random negatives make frequent categories mostly "Yes" and rare ones mostly "No";
    balanced negatives ask every category about as often absent as present, and still ask each image's
    positives and as many absent objects."""
    import random
    from collections import Counter

    from lightning_modules.training_records import grounded_questions

    names = [f"c{i}" for i in range(12)]
    rng = random.Random(0)
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(1, 1201)]
    annotations = []
    for image in images:  # category i is in an image with probability 0.45 * 0.75^i: a strong frequency skew
        held = [i for i in range(12) if rng.random() < 0.45 * 0.75 ** i] or [rng.randrange(12)]
        annotations += [{"image_id": image["id"], "category_id": i + 1} for i in held]
    instances = {"images": images, "annotations": annotations,
                 "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}

    def yes_rates(negatives):
        counts = Counter()
        for record in grounded_questions(instances, per_image=4, seed=0, negatives=negatives):
            question, answer = record["conversations"]
            name = question["value"].split("Is there a ")[1].split(" in the image?")[0]
            counts[name, answer["value"]] += 1
        return {n: counts[n, "Yes"] / (counts[n, "Yes"] + counts[n, "No"]) for n in names[:6]}

    random_rates, balanced_rates = yes_rates("random"), yes_rates("balanced")
    assert random_rates["c0"] > 0.75 and random_rates["c5"] < 0.45  # the name gives the answer away
    spread = lambda rates: max(rates.values()) - min(rates.values())  # noqa: E731
    assert spread(random_rates) > 0.4 and spread(balanced_rates) < spread(random_rates) / 2, (random_rates, balanced_rates)
    assert all(0.35 < rate < 0.65 for rate in balanced_rates.values()), balanced_rates
    grouped = grounded_questions(instances, per_image=4, seed=0, grouped=True, negatives="balanced")
    for record in grouped:
        answers = [t["value"] for t in record["conversations"][1::2]]
        assert answers.count("Yes") == answers.count("No") >= 1
    with pytest.raises(ValueError, match="negatives"):
        grounded_questions(instances, negatives="popular")


def test_one_record_per_image_joins_questions_then_caption():
    from lightning_modules.training_records import grounded_questions, join_per_image

    instances = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
                 "categories": [{"id": i, "name": n} for i, n in enumerate(["dog", "cat", "car"], 1)],
                 "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 2}]}
    captions = [{"image": "b.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                     {"from": "gpt", "value": "A cat."}]}]
    joined = join_per_image(grounded_questions(instances, per_image=1, seed=0, grouped=True) + captions)
    assert [r["image"] for r in joined] == ["a.png", "b.png"]
    turns = joined[1]["conversations"]
    assert len(turns) == 6 and turns[-2]["value"] == "Describe." and turns[-1]["value"] == "A cat."
    assert sum("<image>" in t["value"] for t in turns) == 1 and turns[0]["value"].startswith("<image>\n")


def test_cosine_schedule_warms_up_then_decays_to_a_tenth():
    from lightning_modules.module import lr_factor

    assert lr_factor(0, 10, 110) == pytest.approx(0.1) and lr_factor(9, 10, 110) == 1.0
    assert lr_factor(10, 10, 110) == 1.0 and lr_factor(60, 10, 110) == pytest.approx(0.55)
    assert lr_factor(110, 10, 110) == pytest.approx(0.1) and lr_factor(500, 10, 110) == pytest.approx(0.1)
    assert lr_factor(500, 10, None) == 1.0 and lr_factor(3, 0, None) == 1.0


def test_a_fit_on_a_lora_export_reloads_whole(tmp_path, tiny_llava_dir):
    """Stage 2 fitted on stage 1's lora/ exports an adapter whose base is that folder: loading it merges both
    adapters in order (not stage 2 alone onto the original base), with the processor size the fit trained at."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from grounding.vlm import load_vlm
    from grounding.region_tokens import RegionConfig
    from lightning_modules.module import RegionTokensModule

    def fitted(vlm, out, seed):
        module = RegionTokensModule(vlm=vlm, regions=RegionConfig(num_regions=0), lora_r=4, train_projector=True,
                                    image_size=32)
        module.configure_model()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # stands in for training: every trained weight moves
            for parameter in module.model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        module.export(out)
        return out / "lora"

    first = fitted(tiny_llava_dir, tmp_path / "stage1", seed=1)
    assert (first / "processor_config.json").is_file() and not (first / "config.json").exists()
    model, processor = load_vlm(str(first), "float32", "cpu")
    assert processor.image_processor.size == {"height": 32, "width": 32}  # the trained size, not the base's
    second = fitted(str(first), tmp_path / "stage2", seed=2)
    recorded = json.loads((second / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(first.resolve())

    ids = torch.tensor([[1, 5, 9, 3, 7]])
    base = lambda: AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()  # noqa: E731
    with torch.no_grad():
        got = load_vlm(str(second), "float32", "cpu")[0](input_ids=ids).logits
        both = PeftModel.from_pretrained(PeftModel.from_pretrained(base(), first).merge_and_unload(), second)
        want = both.eval()(input_ids=ids).logits
        alone = PeftModel.from_pretrained(base(), second).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - alone).abs().max() > 1e-3  # stage 1 is in the reloaded model
