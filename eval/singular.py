"""An offline English singulariser that maps caption tokens the way pattern.en's `singularize` does on the words
that decide CHAIR scores (published CHAIR numbers come from pattern, quirks included: "bus" -> "bu",
"glass" -> "glas", "tennis" -> "tenni", "ties" -> "ty"). Written from scratch (pattern is not on PyPI and
NLTK's lemmatiser needs downloads); `tests/test_chair.py` checks it against a table produced by Debian's
python3-pattern, and against pattern itself when it is installed.
"""

from __future__ import annotations

__all__ = ["singularize"]

_UNCHANGED = {
    "sheep", "fish", "deer", "species", "series", "news", "scissors", "cattle", "christmas", "moose", "bison",
    "salmon", "trout", "aircraft", "equipment", "information", "rice", "furniture", "luggage", "is", "as",
    "collies", "doggies", "always", "mathematics", "physics", "athletics", "politics",
}
_IRREGULAR = {
    "people": "person", "children": "child", "men": "man", "women": "woman", "teeth": "tooth", "feet": "foot",
    "geese": "goose", "mice": "mouse", "oxen": "ox", "oxens": "oxs", "knives": "knife", "wives": "wife",
    "lives": "life", "leaves": "leaf", "wolves": "wolf", "halves": "half", "loaves": "loaf", "calves": "calf",
    "thieves": "thief", "shelves": "shelve", "selves": "self", "scarves": "scarf", "hooves": "hoof",
    "elves": "elf", "dice": "die", "lice": "louse", "criteria": "criterion", "phenomena": "phenomenon",
    "cacti": "cactus", "fungi": "fungus", "magpies": "magpy", "movies": "movie", "pies": "pie",
    "cookies": "cookie", "brownies": "brownie", "ties": "ty", "clothes": "clothe", "canoes": "cano",
    "shoes": "shoe", "toes": "toe", "hoes": "hoe", "kine": "cow", "this": "thi", "its": "it",
}


def _strip(word: str, suffix: str, replacement: str = "") -> str:
    return word[: len(word) - len(suffix)] + replacement


def singularize(word: str) -> str:
    """Singular of a lower-case token (other tokens are returned unchanged)."""
    if not word or not word.isalpha() or len(word) < 3 and word != "us":
        return word
    if word in _UNCHANGED:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    for plural, singular in (("men", "man"), ("women", "woman"), ("people", "person"), ("children", "child"),
                             ("knives", "knife"), ("wives", "wife")):
        if word.endswith(plural) and len(word) > len(plural):  # policemen, sportsmen, townspeople
            return _strip(word, plural, singular)
    if word.endswith("ies"):
        return _strip(word, "ies", "y")
    if word.endswith("sses"):
        return _strip(word, "es")
    if word.endswith(("ches", "shes", "xes", "zzes")):
        return _strip(word, "es")
    if word.endswith("uses") and len(word) > 4 and word[-5] not in "aeiou":  # buses -> bus, not houses
        return _strip(word, "es")
    if word.endswith("oes"):
        return _strip(word, "es")
    if word.endswith("ves"):
        return _strip(word, "s")
    if word.endswith("s"):
        return word[:-1]  # also pattern's quirks: glass -> glas, bus -> bu, tennis -> tenni, has -> ha
    return word
