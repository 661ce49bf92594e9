"""Fictitious people for the knowledge experiments, drawn deterministically from a seed.

Every fact the experiments teach must be new to the model, so the people are invented: names
from two pools of first names and one of surnames (each full name used once), and for each person
what an experiment asks about — a one-of-a-kind description ("the architect of the crimson
harbor bridge"), a mother, or the six attributes of a biography (Allen-Zhu & Li 2023's bioS:
birth date, birth city, university, major, employer, the employer's city).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FEMALE = ("Adelaide", "Beatrix", "Cordelia", "Daphne", "Eleanor", "Felicity", "Georgina",
          "Harriet", "Imogen", "Josephine", "Katarina", "Lavinia", "Marguerite", "Nadia",
          "Ottilie", "Philippa", "Rosalind", "Seraphina", "Theodora", "Ursula", "Valentina",
          "Wilhelmina", "Yolanda", "Zinnia", "Annika", "Bronwyn", "Clementine", "Delphine",
          "Esmeralda", "Florentina", "Genevieve", "Henrietta", "Isadora", "Juniper", "Leocadia",
          "Mirabel", "Odalys", "Perpetua", "Rowena", "Solveig")
MALE = ("Alaric", "Barnaby", "Cornelius", "Desmond", "Evander", "Fitzgerald", "Gideon",
        "Horatio", "Ignatius", "Jasper", "Lysander", "Montgomery", "Nathaniel", "Octavian",
        "Peregrine", "Quentin", "Rupert", "Sebastian", "Thaddeus", "Ulysses", "Valentin",
        "Wolfgang", "Xavier", "Zebedee", "Ambrose", "Bartholomew", "Casimir", "Dorian",
        "Emmerich", "Florian", "Gulliver", "Hieronymus", "Isidore", "Jolyon", "Leopold",
        "Mortimer", "Oswin", "Percival", "Roderick", "Silvester")
SURNAMES = ("Abernathy", "Blackwood", "Castellane", "Dunmore", "Everleigh", "Fairweather",
            "Grimsby", "Hollingsworth", "Ingleby", "Jessamy", "Kettleborough", "Lockhart",
            "Marchbanks", "Netherfield", "Oakenshaw", "Pemberton", "Quillfeather", "Ravenscroft",
            "Stonebridge", "Thistlewood", "Underhill", "Vantongeren", "Wetherby", "Yardley",
            "Zabriskie", "Ashcombe", "Brightwater", "Coldharbour", "Drummond", "Eastwick",
            "Farrington", "Greenhalgh", "Hawthorne", "Ironside", "Kingsley", "Larkspur",
            "Montague", "Northcott", "Oldcastle", "Pickering", "Redgrave", "Silverton",
            "Tremaine", "Upton", "Vexley", "Winterbourne", "Ashdown", "Birchall", "Cavendish",
            "Delacroix", "Ellsworth", "Foxcroft", "Galbraith", "Harcourt", "Inchbald", "Jellicoe",
            "Kilbride", "Lindqvist", "Merriweather", "Nightingale", "Ormsby", "Prendergast",
            "Quartermain", "Rothwell", "Sandringham", "Tolliver", "Umberleigh", "Verity",
            "Whitcombe", "Yelverton")

ROLES = ("architect", "composer", "author", "director", "inventor", "painter", "cartographer",
         "sculptor", "choreographer", "designer", "founder", "engineer", "poet", "photographer",
         "playwright", "astronomer")
MARKS = ("crimson", "silent", "floating", "forgotten", "crystal", "northern", "eternal", "hollow",
         "golden", "midnight", "iron", "whispering", "seventh", "frozen", "endless", "painted",
         "sunken", "velvet", "burning", "paper", "lunar", "copper", "twin", "emerald")
WORKS = ("harbor bridge", "desert opera", "glass cathedral", "underwater symphony",
         "mountain observatory", "river atlas", "clockwork garden", "sky library", "salt museum",
         "winter carnival", "island railway", "marble labyrinth", "lantern festival",
         "coral theatre", "orchard ballet", "storm archive", "tide calendar", "wind orchestra",
         "canyon chapel", "forest map")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
CITIES = ("Port Alder", "Briarwick", "Calloway Falls", "Dunmere", "Elmhaven", "Fenwick Bay",
          "Glenrock", "Havenbrook", "Ironvale", "Juniper Point", "Kestrel Ridge", "Larchmont",
          "Marrowgate", "Northwold", "Oakhurst", "Pinecrest", "Queensferry", "Ravenmoor",
          "Saltmarsh", "Thornbury", "Umberton", "Valecrest", "Westerly", "Yarrowfield")
UNIVERSITIES = tuple(f"{place} {kind}" for place, kind in zip(
    ("Ashford", "Belmont", "Carrow", "Dalton", "Everett", "Fairmont", "Greystone", "Holloway",
     "Kingsbridge", "Lowell", "Merrion", "Newbury", "Orwell", "Prescott", "Radcliffe",
     "Sterling"),
    ("University", "Institute of Technology", "College", "University", "Polytechnic",
     "University", "College", "Institute", "University", "College", "University",
     "Institute of Technology", "University", "College", "University", "Polytechnic")))
MAJORS = ("Chemistry", "Economics", "Linguistics", "Marine Biology", "Philosophy",
          "Mechanical Engineering", "Art History", "Mathematics", "Geology", "Music",
          "Architecture", "Astronomy", "Nursing", "Agriculture", "Statistics", "Sociology")
EMPLOYERS = (("Northbeam Logistics", "Briarwick"), ("Aldergate Foods", "Dunmere"),
             ("Copperline Rail", "Glenrock"), ("Halcyon Textiles", "Havenbrook"),
             ("Meridian Optics", "Larchmont"), ("Oxbow Pharmaceuticals", "Marrowgate"),
             ("Pillarstone Bank", "Northwold"), ("Quayside Shipping", "Port Alder"),
             ("Redfern Publishing", "Oakhurst"), ("Silverleaf Software", "Pinecrest"),
             ("Tallow & Wick Candles", "Queensferry"), ("Umbra Aerospace", "Ravenmoor"),
             ("Verdant Energy", "Saltmarsh"), ("Wexford Glassworks", "Thornbury"),
             ("Yellowpine Timber", "Valecrest"), ("Zephyr Telecom", "Westerly"))


@dataclass(frozen=True)
class Person:
    name: str
    female: bool

    @property
    def pronoun(self) -> str:
        return "She" if self.female else "He"

    @property
    def child_word(self) -> str:
        return "daughter" if self.female else "son"


def people(n: int, rng: random.Random, taken: set[str] = frozenset(),
           women_only: bool = False) -> list[Person]:
    """n people with full names not in `taken` and not repeated."""
    pool = [(f, female) for names, female in ((FEMALE, True), (MALE, False)) for f in names
            if female or not women_only]
    if n > len(pool) * len(SURNAMES) - len(taken):
        raise ValueError(f"{n} people is more than the {len(pool) * len(SURNAMES):,} names "
                         "the pools can make")
    out, used = [], set(taken)
    while len(out) < n:
        first, female = rng.choice(pool)
        name = f"{first} {rng.choice(SURNAMES)}"
        if name not in used:
            used.add(name)
            out.append(Person(name, female))
    return out


def descriptions(n: int, rng: random.Random) -> list[str]:
    """n different descriptions, 'the <role> of the <mark> <work>'."""
    combos = [(r, m, w) for r in ROLES for m in MARKS for w in WORKS]
    return [f"the {r} of the {m} {w}" for r, m, w in rng.sample(combos, n)]


@dataclass(frozen=True)
class Biography:
    """Allen-Zhu & Li's six attributes of one person (the employer's city follows the
    employer)."""

    person: Person
    birth_date: str
    birth_city: str
    university: str
    major: str
    employer: str
    employer_city: str

    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ATTRIBUTES}


ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")


def biographies(persons: list[Person], rng: random.Random) -> list[Biography]:
    out = []
    for p in persons:
        employer, city = rng.choice(EMPLOYERS)
        date = f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1920, 2000)}"
        out.append(Biography(p, date, rng.choice(CITIES), rng.choice(UNIVERSITIES),
                             rng.choice(MAJORS), employer, city))
    return out
