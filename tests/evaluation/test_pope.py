import json
import random

import pytest

from eval.pope import SHIPPED_SPLITS, build_pope, load_questions, parse_answer, pope_metrics


def official_reference(answers, labels):
    """The POPE repository's evaluate.py steps, written out plainly."""
    preds = []
    for text in answers:
        if text.find(".") != -1:
            text = text.split(".")[0]
        text = text.replace(",", "")
        words = text.split(" ")
        preds.append("no" if ("No" in words or "not" in words or "no" in words) else "yes")
    pos, neg = 1, 0
    pred_list = [0 if p == "no" else 1 for p in preds]
    label_list = [0 if l == "no" else 1 for l in labels]
    tp = sum(p == pos and l == pos for p, l in zip(pred_list, label_list))
    fp = sum(p == pos and l == neg for p, l in zip(pred_list, label_list))
    tn = sum(p == neg and l == neg for p, l in zip(pred_list, label_list))
    fn = sum(p == neg and l == pos for p, l in zip(pred_list, label_list))
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return {"accuracy": 100 * (tp + tn) / len(labels), "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * 2 * precision * recall / (precision + recall),
            "yes_ratio": 100 * pred_list.count(1) / len(pred_list)}


def test_official_parser_cases():
    assert parse_answer("Yes, there is a dog in the image.") == "yes"
    assert parse_answer("No, there is no dog.") == "no"
    assert parse_answer("There is not a dog in the image.") == "no"
    assert parse_answer("Yes. But there is no cat.") == "yes"  # only the first sentence counts
    assert parse_answer("Yes, it is not hard to see.") == "no"  # "not" anywhere in the first sentence
    assert parse_answer("Nope") == "yes"  # the official rule's known blind spot
    assert parse_answer("No\n") == "yes"  # no strip in the official script: "No\n" is not the word "No"
    assert parse_answer("Nope", "strict") == "unknown" and parse_answer("no.", "strict") == "no"
    assert parse_answer("I think yes", "substring") == "yes" and parse_answer("maybe", "substring") == "unknown"
    with pytest.raises(KeyError, match="official"):
        parse_answer("yes", "bogus")


def test_metrics_equal_official_procedure_on_hand_made_answers():
    rng = random.Random(0)
    phrases = ["Yes, there is.", "No, there is not.", "Yes", "No", "There is no such object.", "Yes. No cat.",
               "I do not see one.", "Yes, a small one, on the left.", "no", "yes"]
    labels = [rng.choice(["yes", "no"]) for _ in range(200)]
    answers = [rng.choice(phrases) for _ in range(200)]
    ours = pope_metrics(labels, [parse_answer(a) for a in answers])
    theirs = official_reference(answers, labels)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value)


def test_unknown_answers_count_as_wrong_not_yes():
    metrics = pope_metrics(["yes", "no", "yes"], ["unknown", "no", "yes"])
    assert metrics["unknown"] == 1 and metrics["accuracy"] == pytest.approx(200 / 3)
    assert metrics["yes_ratio"] == pytest.approx(100 / 3) and metrics["recall"] == 50.0


def test_shipped_files_load():
    for split in SHIPPED_SPLITS:
        questions = load_questions(split)
        assert len(questions) >= 2900 and {"question_id", "image", "text", "label"} <= set(questions[0])
    assert load_questions("adversarial")[0]["image"].startswith("COCO_val2014_")


def coco_fixture(num_images=12, seed=0):
    rng = random.Random(seed)
    names = ["person", "dog", "cat", "car", "chair", "cup", "fork", "knife", "bowl", "pizza"]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    images, annotations, aid = [], [], 1
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"img_{image_id:03d}.jpg"})
        count = 2 if image_id % 5 == 0 else rng.randint(3, 6)  # some images too sparse for POPE
        base = ["person", "chair", "cup"] if image_id % 2 else ["dog", "car", "person"]
        objs = base + rng.sample([n for n in names if n not in base], count - 3) if count >= 3 else ["person", "dog"]
        for name in objs:
            annotations.append({"id": aid, "image_id": image_id, "category_id": names.index(name) + 1,
                                "bbox": [0, 0, 5, 5], "iscrowd": 0})
            aid += 1
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_builder_follows_the_official_structure(split):
    instances = coco_fixture()
    questions = build_pope(instances, split, num_images=8, seed=1)
    present = {}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], []).append(names[ann["category_id"]])
    files = {im["file_name"]: im["id"] for im in instances["images"]}
    by_image = {}
    for q in questions:
        by_image.setdefault(q["image"], []).append(q)
    assert len(by_image) == 8
    for image, qs in by_image.items():
        objs = present[files[image]]
        assert len(set(objs)) >= 3
        assert [q["label"] for q in qs] == ["yes", "no"] * 3
        yes = [q["text"][len("Is there a "):-len(" in the image?")] for q in qs if q["label"] == "yes"]
        no = [q["text"][len("Is there a "):-len(" in the image?")] for q in qs if q["label"] == "no"]
        assert yes == list(dict.fromkeys(objs))[:3]  # first three present, in annotation order
        assert not set(no) & set(objs)
    if split == "adversarial":  # negatives: most co-occurring absent objects
        chosen = [files[i] for i in by_image]
        co = {}
        for i in chosen:
            for a in set(present[i]):
                for b in set(present[i]) - {a}:
                    co.setdefault(a, {}).setdefault(b, 0)
                    co[a][b] += 1
        image = next(iter(by_image))
        objs = set(present[files[image]])
        score = {n: sum(co.get(p, {}).get(n, 0) for p in objs) for n in names.values() if n not in objs}
        no = [q["text"][len("Is there a "):-len(" in the image?")] for q in by_image[image] if q["label"] == "no"]
        assert no == sorted(score, key=lambda n: (-score[n], n))[:3]
    assert build_pope(instances, split, num_images=8, seed=1) == questions  # seedable


def test_question_files_must_have_fields(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"question_id": 1, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="image"):
        load_questions(tmp_path / "q.jsonl")
