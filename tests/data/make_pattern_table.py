"""Regenerate pattern_singular.json: pattern.en's singularize on the CHAIR vocabulary and common caption words.

    apt-get install python3-pattern && python3 tests/data/make_pattern_table.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from pattern_oracle import load  # noqa: E402

COMMON = """a an the is are was were be been being has have had having this that these those its it his her
their there here with without on in at of to from by for as and or but not no yes two three several many some
few one man men woman women people person child children boy boys girl girls kid kids player players table
tables room rooms street streets road roads grass glass glasses dress dresses bus buses tennis racket rackets
ties tie shirt shirts pants jeans shorts shoes shoe hat hats sign signs light lights water sky skies cloud
clouds tree trees building buildings field fields plate plates food foods pizza pizzas sandwich sandwiches
dog dogs cat cats horse horses sheep cow cows bird birds kite kites skis ski board boards wave waves beach
beaches city cities window windows door doors wall walls floor floors kitchen kitchens bathroom bathrooms
toilet toilets seat seats sink sinks bed beds couch couches chair chairs bench benches box boxes dish dishes
knife knives fork forks spoon spoons bowl bowls cup cups bottle bottles wine glas vase vases clock clocks
book books phone phones laptop laptops keyboard keyboards mouse mice remote remotes tv tvs screen screens
car cars truck trucks train trains plane planes boat boats bike bikes bicycle bicycles motorcycle
motorcycles umbrella umbrellas bag bags backpack backpacks suitcase suitcases frisbee frisbees ball balls
bat bats glove gloves skateboard skateboards surfboard surfboards snowboard snowboards banana bananas apple
apples orange oranges broccoli carrot carrots hot dog dogs donut donuts doughnut doughnuts cake cakes
giraffe giraffes zebra zebras elephant elephants bear bears teddy teddies oven ovens microwave microwaves
refrigerator refrigerators fridge fridges toaster toasters scissors hair drier driers toothbrush toothbrushes
potted plant plants stop parking meter meters fire hydrant hydrants traffic baby adult passenger jet jets
bow home track tracks cellphone stove top computer computers sport sports lens gas us canoe canoes leaves
leaf wolves shelves halves ladies tomatoes potatoes photos pianos heroes cactus minibus airbus species
series news cattle geese teeth feet ox oxen policemen sportsmen horseman horsemen cowboys pitcher pitchers
catcher batter skier skiers surfer surfers snowboarder rider riders vehicles vehicle animals animal cub cubs
puppy puppies kitten kittens calf calves lamb lambs""".split()


def main():
    module = load()
    synonyms = [line.strip().split(", ") for line in (HERE.parents[1] / "grounding/data/chair/synonyms.txt").open()]
    doubles = json.loads((HERE.parents[1] / "grounding/data/chair/double_words.json").read_text())
    words = {w for line in synonyms for phrase in line for w in phrase.split()}
    words |= {w for phrase in doubles for w in phrase.split()}
    forms = set(COMMON) | words | {module.pluralize(w) for w in words}
    table = {f: module.singularize(f) for f in sorted(forms) if f.isalpha()}
    (HERE / "pattern_singular.json").write_text(json.dumps(table, indent=0, sort_keys=True) + "\n")
    print(len(table), "forms")


if __name__ == "__main__":
    main()
