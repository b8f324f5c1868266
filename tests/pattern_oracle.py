"""Load Debian's pattern/text/en/inflect.py without importing pattern.en (which wants WordNet downloads)."""
import importlib.util, sys, types
def load(path="/usr/lib/python3/dist-packages/pattern/text/en/inflect.py"):
    text = types.ModuleType("pattern.text")
    class Verbs:
        def __init__(self, *a, **k): pass
        conjugate = lemma = lexeme = tenses = lambda self, *a, **k: None
    text.Verbs = Verbs
    for i, name in enumerate("INFINITIVE PRESENT PAST FUTURE FIRST SECOND THIRD SINGULAR PLURAL SG PL PROGRESSIVE PARTICIPLE".split()):
        setattr(text, name, name.lower())
    pkg = types.ModuleType("pattern"); pkg.text = text; pkg.__path__ = []
    sys.modules.setdefault("pattern", pkg); sys.modules["pattern.text"] = text
    spec = importlib.util.spec_from_file_location("pattern_en_inflect", path)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module
