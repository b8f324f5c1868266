import json
from pathlib import Path

import pytest

from eval.chair import ChairScorer, ground_truth_from_coco
from eval.singular import singularize

TABLE = json.loads((Path(__file__).parents[1] / "data" / "pattern_singular.json").read_text())


def test_singulariser_agrees_with_pattern_table():
    """The table was produced by Debian's python3-pattern (tests/data/make_pattern_table.py)."""
    disagreements = {w: (p, singularize(w)) for w, p in TABLE.items() if singularize(w) != p}
    assert not disagreements
    assert singularize("bus") == "bu" and singularize("glass") == "glas" and singularize("people") == "person"


@pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages/pattern/text/en/inflect.py").exists(),
                    reason="Debian python3-pattern not installed (apt-get install python3-pattern)")
def test_singulariser_agrees_with_live_pattern():
    from pattern_oracle import load

    pattern = load()
    scorer = ChairScorer()
    words = set(TABLE) | {pattern.pluralize(w) for w in scorer.synonym_to_category}
    words = {w for w in words if w.isalpha()}
    for word in words:
        assert scorer.synonym_to_category.get(singularize(word)) == scorer.synonym_to_category.get(
            pattern.singularize(word)), word


def test_chair_on_hand_written_captions():
    scorer = ChairScorer()
    truth = {1: ["person", "dog"], 2: ["toilet"], 3: ["dining table", "pizza"]}
    captions = [
        {"image_id": 1, "caption": "A man walks two dogs next to a cat. The man smiles."},  # cat hallucinated
        {"image_id": 2, "caption": "A toilet seat is up in a small bathroom."},  # seat is not chair
        {"image_id": 3, "caption": "A hot dog and a pizza on a table."},  # hot dog is not dog
    ]
    result = scorer.score(captions, truth)
    first, second, third = result.per_caption
    assert first.mentions == [("man", "person"), ("dog", "dog"), ("cat", "cat"), ("man", "person")]
    assert first.hallucinated == [("cat", "cat")]
    assert second.mentions == [("toilet", "toilet")] and not second.hallucinated
    assert ("hot dog", "hot dog") in third.mentions and all(c != "dog" for _, c in third.mentions)
    assert third.hallucinated == [("hot dog", "hot dog")]
    # CHAIR_i: 2 hallucinated of 4 + 1 + 3 = 8 mentions (repeats count); CHAIR_s: 2 of 3 captions
    assert result.mentions == 8 and result.chair_i == pytest.approx(100 * 2 / 8)
    assert result.chair_s == pytest.approx(100 * 2 / 3)
    # recall: person, dog (2/2) + toilet (1/1) + pizza, dining table (2/2)
    assert result.recall == pytest.approx(100.0)


def test_two_word_phrases_and_baby_animals():
    scorer = ChairScorer()
    assert scorer.objects_in("A baby elephant near a traffic light and a teddy bear.") == {
        "elephant", "traffic light", "teddy bear"}
    assert scorer.objects_in("Two wine glasses on the table") == {"wine glass", "dining table"}
    assert scorer.objects_in("A red bus") == set()  # pattern's "bus" -> "bu": the standard CHAIR misses it


def test_ground_truth_from_coco_files(tmp_path):
    (tmp_path / "instances_val2014.json").write_text(json.dumps({
        "categories": [{"id": 18, "name": "dog"}], "annotations": [{"image_id": 5, "category_id": 18}]}))
    (tmp_path / "captions_val2014.json").write_text(json.dumps({
        "annotations": [{"image_id": 5, "caption": "A woman holds a frisbee."}]}))
    assert ground_truth_from_coco(tmp_path) == {5: {"dog", "person", "frisbee"}}
    with pytest.raises(FileNotFoundError):
        ground_truth_from_coco(tmp_path / "nothing")
