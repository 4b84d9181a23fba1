"""Synthetic e-prescriptions: KBV_PR_ERP_Bundle-shaped FHIR R4 Bundles for tests and benchmarks.

Every Bundle has the shape of the gematik/KBV e-prescription profile 1.2 (Composition,
MedicationRequest, Medication with a PZN, Patient, Practitioner, Organization, Coverage,
all referenced by ``urn:uuid``) and is valid FHIR R4 (checked on samples by the tests
with :func:`patientkey.fhir.records.load_record`). The content is invented but shaped
like the real thing:

* patients: German given/family names, birth dates from 1930 to 2022, street addresses
  with matching postal codes and cities, a KVNR (insurance number: a letter, eight
  digits and the check digit computed as the GKV specifies);
* prescribers: LANR with its check digit, "Dr. med." names, specialty, practice (BSNR,
  address, phone); coverage with statutory (GKV) or private (PKV) insurers;
* medications: ~30 common generics in several strengths, manufacturers, dosage forms
  and N1/N2/N3 package sizes; the PZN (8 digits, modulo-11 check digit) is derived from
  the product, so one product keeps one PZN across bundles and seeds; dosage text such
  as ``1-0-1-0`` or none (DosageFlag false), 1-3 packages, aut-idem flag;
* ``Bundle.identifier`` is a PrescriptionID ``FFF.NNN.NNN.NNN.NNN.CC``: flow type 160
  (GKV) or 200 (PKV), a 12-digit serial and the ISO 7064 MOD 97-10 check number — the
  gematik format. Serials are consecutive from a seed-dependent start, so every Bundle
  of one run has a unique identifier (the real Fachdienst allocates serials centrally;
  this is an approximation of that, not a registry).

Generation is deterministic per seed (Python's :class:`random.Random`; stable for a
given Python version) and needs no data files: all vocabularies are in this module.
There is no model validation on the hot path. :func:`generate_bundles` builds plain
dicts; :func:`generate_json` and :func:`write_bundles` fill the drawn values into a
pre-serialized template per bundle shape (byte-for-byte the JSON of the same dicts),
about 2.5x10^4 bundles/s on one core; writing 10^5 files takes ~15 s, bounded by the
file system.

Uniqueness of ``Bundle.identifier`` holds within one call; two different seeds may
(rarely) draw overlapping serial ranges.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

from patientkey.errors import InvalidInput

__all__ = [
    "MAX_COUNT",
    "generate_bundles",
    "generate_json",
    "kvnr_check_digit",
    "lanr_check_digit",
    "prescription_id",
    "pzn_check_digit",
    "write_bundles",
]

MAX_COUNT: Final = 10_000_000
"""Most bundles one call generates (10^7: ~80 GB of files)."""

_KBV: Final = "https://fhir.kbv.de/StructureDefinition/"
_KBV_CS: Final = "https://fhir.kbv.de/CodeSystem/"
_V: Final = "|1.2"

# ---------------------------------------------------------------- check digits


def pzn_check_digit(first7: str) -> int | None:
    """PZN check digit (weights 1..7, modulo 11) or ``None`` when the remainder is 10."""
    remainder = sum(int(c) * w for w, c in enumerate(first7, start=1)) % 11
    return None if remainder == 10 else remainder


def kvnr_check_digit(letter: str, digits8: str) -> int:
    """KVNR check digit: letter as 01..26, then weights 1,2,1,2…, digit sums, modulo 10."""
    number = f"{ord(letter) - 64:02d}{digits8}"
    total = 0
    for i, c in enumerate(number):
        product = int(c) * (2 if i % 2 else 1)
        total += product // 10 + product % 10
    return total % 10


def lanr_check_digit(digits6: str) -> int:
    """LANR 7th digit: weights 4,9,4,9,4,9 on the first six, ``(10 - sum % 10) % 10``."""
    total = sum(int(c) * (4 if i % 2 == 0 else 9) for i, c in enumerate(digits6))
    return (10 - total % 10) % 10


def prescription_id(flow_type: int, serial: int) -> str:
    """gematik PrescriptionID ``FFF.NNN.NNN.NNN.NNN.CC`` (ISO 7064 MOD 97-10 check)."""
    digits = f"{flow_type:03d}{serial:012d}"
    check = 98 - (int(digits) * 100) % 97
    text = f"{digits}{check:02d}"
    return ".".join([text[0:3], text[3:6], text[6:9], text[9:12], text[12:15], text[15:17]])


# ---------------------------------------------------------------- vocabularies


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _rows(text: str) -> tuple[tuple[str, ...], ...]:
    """``"a|b; c|d"`` → (("a", "b"), ("c", "d"))."""
    return tuple(tuple(item.strip().split("|")) for item in text.split(";"))


_GIVEN_F: Final = _words(
    """Anna Maria Ursula Monika Petra Sabine Claudia Susanne Andrea Birgit Karin Renate Helga
    Gisela Ingrid Julia Katharina Laura Lena Lea Sophie Emma Mia Hannah Johanna Charlotte Greta
    Ilse Erika Brigitte Stefanie Nicole Jana Paula Frieda Elif Sahra Zeynep Marta"""
)
_GIVEN_M: Final = _words(
    """Peter Michael Thomas Andreas Wolfgang Klaus Jürgen Stefan Christian Uwe Frank Bernd
    Dieter Günter Horst Manfred Ludger Jan Lukas Felix Jonas Leon Paul Maximilian Elias Noah Ben
    Matthias Sebastian Tobias Heinz Karl Friedrich Emre Nikolai Mehmet Piotr Luca"""
)
_FAMILY: Final = _words(
    """Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer Koch
    Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann
    Lange Schmitt Werner Schmitz Krause Meier Lehmann Schmid Schulze Maier Köhler Herrmann König
    Walter Mayer Huber Kaiser Fuchs Peters Lang Scholz Möller Weiß Jung Hahn Vogel Friedrich
    Keller Günther Frank Berger Winkler Roth Beck Lorenz Baumann Franke Albrecht Ludwig Böhm
    Winter Kraus Martin Schumacher Krämer Vogt Stein Jäger Otto Sommer Groß Seidel Heinrich
    Brandt Haas Schreiber Königsstein Öztürk Kaya Nowak Kowalski Dietrich Engel Kühn"""
)
_STREETS: Final = (
    "Hauptstraße", "Schulstraße", "Gartenstraße", "Bahnhofstraße", "Dorfstraße", "Bergstraße",
    "Birkenweg", "Lindenstraße", "Kirchstraße", "Waldstraße", "Ringstraße", "Am Markt",
    "Blumenweg", "Rosenstraße", "Wiesenweg", "Mühlenweg", "Goethestraße", "Schillerstraße",
    "Ahornweg", "Eichendorffstraße", "Feldstraße", "Tulpenweg", "Parkstraße", "Mozartstraße",
    "Uhlandstraße", "Breite Straße", "Herbert-Lewin-Platz", "Lessingstraße", "Beethovenstraße",
)  # fmt: skip
# postal code, city, KV region (code of the gkv/wop extension)
_CITIES: Final = _rows(
    """10623|Berlin|72; 10115|Berlin|72; 12043|Berlin|72; 20095|Hamburg|01;
    22765|Hamburg|01; 80331|München|71; 81667|München|71; 50667|Köln|38; 50937|Köln|38;
    60311|Frankfurt am Main|46; 70173|Stuttgart|52; 40213|Düsseldorf|38; 44135|Dortmund|20;
    45127|Essen|38; 04109|Leipzig|98; 01067|Dresden|98; 30159|Hannover|17; 90402|Nürnberg|71;
    28195|Bremen|03; 47051|Duisburg|38; 44787|Bochum|20; 42103|Wuppertal|38; 33602|Bielefeld|20;
    53111|Bonn|38; 48143|Münster|20; 68159|Mannheim|52; 76133|Karlsruhe|52; 65183|Wiesbaden|46;
    86150|Augsburg|71; 93047|Regensburg|71; 26427|Esens|17; 25813|Husum|01; 18273|Güstrow|78;
    53639|Königswinter|38; 61348|Bad Homburg|46; 24103|Kiel|01; 18055|Rostock|78;
    99084|Erfurt|93; 39104|Magdeburg|88; 14467|Potsdam|83; 66111|Saarbrücken|73;
    55116|Mainz|51; 19053|Schwerin|78; 37073|Göttingen|17"""
)
# (display, IK number) — statutory insurers, with the IK numbers of the gematik examples
_GKV: Final = (
    ("Techniker Krankenkasse", "101377508"),
    ("AOK Nordost", "109719018"),
    ("AOK Baden-Württemberg", "108018347"),
    ("AOK Bayern Die Gesundh.", "108416214"),
    ("AOK Rheinland/Hamburg", "104212059"),
    ("DAK-GESUNDHEIT", "101560000"),
    ("KN Knappschaft", "100105006"),
    ("mhplus BKK", "108035612"),
)
_PKV: Final = (
    ("Allianz Private Krankenversicherung", "168140950"),
    ("Debeka Krankenversicherungsverein", "168141347"),
    ("DKV Deutsche Krankenversicherung", "168140346"),
)
# (male, female) job title
_SPECIALTIES: Final = (
    *(
        (f"Facharzt für {field}", f"Fachärztin für {field}")
        for field in (
            "Allgemeinmedizin",
            "Innere Medizin",
            "Innere Medizin: Kardiologie",
            "Kinder- und Jugendmedizin",
            "Psychiatrie und Psychotherapie",
            "Gynäkologie und Geburtshilfe",
            "Orthopädie",
        )
    ),
    ("Praktischer Arzt", "Praktische Ärztin"),
)
_MAKERS: Final = (
    "AL", "Heumann", "STADA", "1 A Pharma", "Hexal", "ratiopharm", "AbZ", "Aristo", "Zentiva",
    "Basics", "Atid", "TAD",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Drug:
    ingredient: str
    strengths: tuple[str, ...]
    unit: str
    form_code: str
    form_text: str
    pack_unit: str
    packs: tuple[tuple[int, str], ...]
    dosages: tuple[str, ...]


def _packs(spec: str) -> tuple[tuple[int, str], ...]:
    """``"20N1 50N2"`` → ((20, "N1"), (50, "N2"))."""
    return tuple((int(item[:-2]), item[-2:]) for item in spec.split())


_PACKS: Final = {
    "tab": "20N1 30N1 50N2 60N2 98N3 100N3",
    "short": "10N1 20N2 50N3",
    "course": "10N1 20N2",
}
_DOSAGES: Final = {
    "daily": ("1-0-0-0", "0-0-1-0", "1x täglich 1 Tablette", "morgens 1 Tablette"),
    "twice": ("1-0-1-0", "2x täglich 1 Tablette"),
    "prn": ("bei Bedarf bis zu 3x täglich 1 Tablette", "bei Schmerzen 1 Tablette, max. 3 pro Tag"),
}
# ingredient | strengths | unit | KBV dosage form | form text | pack unit | packs | dosages.
# Dosage forms (KBV_CS_SFHIR_KBV_DARREICHUNGSFORM): FTA Filmtabletten, TAB Tabletten, RET
# Retardtabletten, TMR magensaftresistente Tabletten, HKP Hartkapseln, DOS Dosieraerosol,
# GEL Gel, TRO Tropfen. Packs/dosages name an entry of _PACKS/_DOSAGES or are literal.
_DRUG_TABLE: Final = """
Metformin|500 850 1000|mg|FTA|Filmtabletten|Stück|tab|twice
Ramipril|2,5 5 10|mg|TAB|Tabletten|Stück|tab|daily
Amlodipin|5 10|mg|TAB|Tabletten|Stück|tab|daily
Bisoprolol|2,5 5 10|mg|FTA|Filmtabletten|Stück|tab|daily
Metoprololsuccinat|23,75 47,5 95|mg|RET|Retardtabletten|Stück|tab|daily
Simvastatin|20 40|mg|FTA|Filmtabletten|Stück|tab|0-0-1-0;abends 1 Tablette
Atorvastatin|10 20 40|mg|FTA|Filmtabletten|Stück|tab|0-0-1-0
Pantoprazol|20 40|mg|TMR|magensaftresistente Tabletten|Stück|tab|1-0-0-0 vor dem Frühstück
Omeprazol|20 40|mg|HKP|Hartkapseln|Stück|tab|1-0-0-0
Ibuprofen|400 600 800|mg|FTA|Filmtabletten|Stück|short|prn
Metamizol-Natrium|500|mg|TAB|Tabletten|Stück|short|prn
Levothyroxin-Natrium|50 75 100 125|µg|TAB|Tabletten|Stück|tab|1-0-0-0 nüchtern
Candesartan|8 16 32|mg|TAB|Tabletten|Stück|tab|daily
Valsartan|80 160|mg|FTA|Filmtabletten|Stück|tab|daily
Hydrochlorothiazid|12,5 25|mg|TAB|Tabletten|Stück|tab|daily
Torasemid|5 10 20|mg|TAB|Tabletten|Stück|tab|daily
Allopurinol|100 300|mg|TAB|Tabletten|Stück|tab|daily
Sertralin|50 100|mg|FTA|Filmtabletten|Stück|tab|daily
Citalopram|10 20|mg|FTA|Filmtabletten|Stück|tab|daily
Amoxicillin|750 1000|mg|FTA|Filmtabletten|Stück|course|1-1-1-0;3x täglich 1 Tablette für 7 Tage
Cefuroxim|250 500|mg|FTA|Filmtabletten|Stück|12N1 24N2|1-0-1-0 für 6 Tage
Doxycyclin|100 200|mg|TAB|Tabletten|Stück|course|1-0-0-0
Apixaban|2,5 5|mg|FTA|Filmtabletten|Stück|20N1 60N2 200N3|1-0-1-0
Sitagliptin|50 100|mg|FTA|Filmtabletten|Stück|28N1 56N2 98N3|1-0-0-0
Prednisolon|5 20|mg|TAB|Tabletten|Stück|short|1-0-0-0 morgens nach dem Frühstück
Tamsulosin|0,4|mg|HKP|Hartkapseln|Stück|30N1 60N2 100N3|1x täglich nach dem Frühstück
Enalapril|5 10 20|mg|TAB|Tabletten|Stück|tab|twice
Salbutamol|0,1|mg/Hub|DOS|Dosieraerosol|Hub|200N1 400N2|bei Bedarf 1-2 Hübe
Diclofenac-Natrium|10|mg/g|GEL|Gel|g|50N1 100N2 150N3|3x täglich dünn auftragen
Novaminsulfon|500|mg/ml|TRO|Tropfen|ml|20N1 50N2 100N3|bis zu 4x täglich 20-40 Tropfen
"""


def _parse_drugs(table: str) -> tuple[_Drug, ...]:
    drugs = []
    for line in table.strip().splitlines():
        name, strengths, unit, form, text, pack_unit, packs, dosages = line.split("|")
        drugs.append(
            _Drug(
                ingredient=name,
                strengths=tuple(strengths.split()),
                unit=unit,
                form_code=form,
                form_text=text,
                pack_unit=pack_unit,
                packs=_packs(_PACKS.get(packs, packs)),
                dosages=_DOSAGES.get(dosages) or tuple(dosages.split(";")),
            )
        )
    return tuple(drugs)


_DRUGS: Final = _parse_drugs(_DRUG_TABLE)

_PZN_CACHE: dict[str, str] = {}


def _pzn_for(product: str) -> str:
    """A stable, check-digit-valid PZN for a product description (not a real PZN)."""
    pzn = _PZN_CACHE.get(product)
    if pzn is None:
        n = int.from_bytes(hashlib.blake2b(product.encode(), digest_size=8).digest(), "big")
        while True:
            first7 = f"{n % 10_000_000:07d}"
            check = pzn_check_digit(first7)
            if check is not None:
                break
            n += 1
        pzn = _PZN_CACHE[product] = f"{first7}{check}"
    return pzn


# ---------------------------------------------------------------- drawing
#
# A bundle is first drawn as a flat mapping of leaf values (``_Values``); the Bundle
# dict is then built from it by ``_build``, which only *places* values and decides
# structure solely by which values are ``None``. That makes the fast path possible:
# ``_Template`` builds the dict once with placeholders, serializes it, and afterwards
# every bundle of that shape is the template text with the JSON-encoded values filled
# in — identical to ``json.dumps(_build(values))`` (the tests check this).

_Values = dict[str, Any]

_BIRTH_FIRST: Final = date(1930, 1, 1).toordinal()
_BIRTH_SPAN: Final = date(2022, 12, 31).toordinal() - _BIRTH_FIRST
_AUTHORED_FIRST: Final = date(2023, 1, 2).toordinal()
_AUTHORED_SPAN: Final = date(2025, 12, 30).toordinal() - _AUTHORED_FIRST
_LETTERS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PRACTICES: Final = 256
_LANR_GROUPS: Final = ("01", "03", "23", "34", "50", "51", "58")


def _person(rng: random.Random, key: str, *, doctor: bool) -> _Values:
    female = rng.random() < 0.5
    if doctor:
        prefix: str | None = "Dr. med." if rng.random() < 0.85 else None
    else:
        prefix = "Dr." if rng.random() < 0.04 else None
    street = rng.choice(_STREETS)
    house = str(rng.randint(1, 140)) + ("a" if rng.random() < 0.08 else "")
    postal, city, region = rng.choice(_CITIES)
    return {
        f"{key}_given": rng.choice(_GIVEN_F if female else _GIVEN_M),
        f"{key}_family": rng.choice(_FAMILY),
        f"{key}_prefix": prefix,
        f"{key}_street": street,
        f"{key}_house": house,
        f"{key}_line": f"{street} {house}",
        f"{key}_postal": postal,
        f"{key}_city": city,
        f"{key}_region": region,
        f"{key}_female": female,
    }


def _draw_patient(rng: random.Random) -> _Values:
    values = _person(rng, "pat", doctor=False)
    letter = rng.choice(_LETTERS)
    digits = f"{rng.randrange(100_000_000):08d}"
    private = rng.random() < 0.08
    insurer, ik = rng.choice(_PKV if private else _GKV)
    values.update(
        pat_birth=date.fromordinal(_BIRTH_FIRST + rng.randrange(_BIRTH_SPAN)).isoformat(),
        pat_kvnr=f"{letter}{digits}{kvnr_check_digit(letter, digits)}",
        pat_kvnr_system=f"http://fhir.de/sid/{'pkv' if private else 'gkv'}/kvid-10",
        cov_private=private,
        cov_type="PKV" if private else "GKV",
        cov_insurer=insurer,
        cov_ik=ik,
        cov_member=rng.choice(("1", "1", "1", "3", "5")),
        cov_dmp="00" if rng.random() < 0.85 else f"{rng.randint(1, 12):02d}",
        cov_wop=None if private else values["pat_region"],
    )
    return values


def _draw_practice(rng: random.Random) -> _Values:
    values = _person(rng, "doc", doctor=True)
    six = f"{rng.randrange(1_000_000):06d}"
    specialty = rng.choice(_SPECIALTIES)[1 if values["doc_female"] else 0]
    family, given, prefix = values["doc_family"], values["doc_given"], values["doc_prefix"]
    style = rng.randrange(4)
    if style == 0:
        name = f"Praxis {prefix + ' ' if prefix else ''}{given} {family}"
    elif style == 1:
        name = f"Hausarztpraxis {family}"
    elif style == 2:
        name = f"MVZ {values['doc_city']}"
    else:
        name = f"Gemeinschaftspraxis {family} & {rng.choice(_FAMILY)}"
    values.update(
        doc_lanr=f"{six}{lanr_check_digit(six)}{rng.choice(_LANR_GROUPS)}",
        doc_specialty=specialty,
        org_bsnr=f"{values['doc_region']}{rng.randrange(10_000_000):07d}",
        org_name=name,
        org_phone=f"0{rng.randint(30, 9999)}{rng.randrange(10**6, 10**7)}",
        org_email=f"praxis.{rng.randrange(10**5):05d}@example.de" if rng.random() < 0.6 else None,
    )
    return values


def _number(german: str) -> int | float:
    """``"2,5"`` → 2.5, ``"10"`` → 10 (a JSON number, as KBV writes strengths)."""
    if "," in german:
        return float(german.replace(",", "."))
    return int(german)


_UUID_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET: Final = (0x4000 << 64) | (0x8000 << 48)


def _uuid(rng: random.Random) -> str:
    """A random (version 4) UUID from ``rng``: ``str(uuid.UUID(int=..., version=4))``, faster."""
    h = f"{(rng.getrandbits(128) & _UUID_CLEAR) | _UUID_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _draw(rng: random.Random, serial: int, patient: _Values, practice: _Values) -> _Values:
    values: _Values = {**patient, **practice}
    for key in ("bundle", "comp", "req", "med", "pat", "doc", "org", "cov"):
        rid = _uuid(rng)
        values[f"{key}_id"] = rid
        values[f"{key}_ref"] = f"urn:uuid:{rid}"
    day = date.fromordinal(_AUTHORED_FIRST + rng.randrange(_AUTHORED_SPAN))
    offset = "+02:00" if 4 <= day.month <= 10 else "+01:00"
    clock = f"{rng.randint(7, 18):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
    drug = rng.choice(_DRUGS)
    strength = rng.choice(drug.strengths)
    size, norm = rng.choice(drug.packs)
    pack = f"{size} {drug.form_text}" if drug.pack_unit == "Stück" else f"{size} {drug.pack_unit}"
    text = f"{drug.ingredient} {rng.choice(_MAKERS)} {strength} {drug.unit} {pack} {norm}"
    dosage = rng.choice(drug.dosages) if rng.random() < 0.7 else None
    values.update(
        prescription_id=prescription_id(200 if patient["cov_private"] else 160, serial),
        moment=f"{day.isoformat()}T{clock}{offset}",
        authored=day.isoformat(),
        med_text=text,
        med_pzn=_pzn_for(text),
        med_norm=norm,
        med_form=drug.form_code,
        med_pack_size=str(size),
        med_pack_unit=drug.pack_unit,
        med_ingredient=drug.ingredient,
        med_strength=_number(strength),
        med_strength_unit=drug.unit,
        req_dosage_flag=dosage is not None,
        req_dosage=dosage,
        req_co_payment="0" if rng.random() < 0.85 else rng.choice(("1", "2")),
        req_quantity=rng.choice((1, 1, 1, 1, 2, 3)),
        req_substitution=rng.random() < 0.9,
    )
    return values


# ---------------------------------------------------------------- building


def _meta(profile: str) -> dict[str, Any]:
    return {"profile": [f"{_KBV}{profile}{_V}"]}


def _coding_ext(url: str, system: str, code: Any) -> dict[str, Any]:
    return {"url": url, "valueCoding": {"system": system, "code": code}}


def _name(v: _Values, key: str) -> dict[str, Any]:
    name: dict[str, Any] = {
        "use": "official",
        "family": v[f"{key}_family"],
        "_family": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-name",
                    "valueString": v[f"{key}_family"],
                }
            ]
        },
        "given": [v[f"{key}_given"]],
    }
    if v[f"{key}_prefix"] is not None:
        name["prefix"] = [v[f"{key}_prefix"]]
        name["_prefix"] = [
            {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier",
                        "valueCode": "AC",
                    }
                ]
            }
        ]
    return name


def _address(v: _Values, key: str) -> dict[str, Any]:
    return {
        "type": "both",
        "line": [v[f"{key}_line"]],
        "_line": [
            {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-houseNumber",
                        "valueString": v[f"{key}_house"],
                    },
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-streetName",
                        "valueString": v[f"{key}_street"],
                    },
                ]
            }
        ],
        "city": v[f"{key}_city"],
        "postalCode": v[f"{key}_postal"],
        "country": "D",
    }


def _composition(v: _Values) -> dict[str, Any]:
    section = f"{_KBV_CS}KBV_CS_ERP_Section_Type"
    return {
        "resourceType": "Composition",
        "id": v["comp_id"],
        "meta": _meta("KBV_PR_ERP_Composition"),
        "extension": [
            _coding_ext(
                f"{_KBV}KBV_EX_FOR_Legal_basis",
                f"{_KBV_CS}KBV_CS_SFHIR_KBV_STATUSKENNZEICHEN",
                "00",
            )
        ],
        "status": "final",
        "type": {"coding": [{"system": f"{_KBV_CS}KBV_CS_SFHIR_KBV_FORMULAR_ART", "code": "e16A"}]},
        "subject": {"reference": v["pat_ref"]},
        "date": v["moment"],
        "author": [
            {"reference": v["doc_ref"], "type": "Practitioner"},
            {
                "type": "Device",
                "identifier": {
                    "system": "https://fhir.kbv.de/NamingSystem/KBV_NS_FOR_Pruefnummer",
                    "value": "Y/400/2107/36/999",
                },
            },
        ],
        "title": "elektronische Arzneimittelverordnung",
        "custodian": {"reference": v["org_ref"]},
        "section": [
            {
                "code": {"coding": [{"system": section, "code": "Prescription"}]},
                "entry": [{"reference": v["req_ref"]}],
            },
            {
                "code": {"coding": [{"system": section, "code": "Coverage"}]},
                "entry": [{"reference": v["cov_ref"]}],
            },
        ],
    }


def _request(v: _Values) -> dict[str, Any]:
    dose: dict[str, Any] = {
        "extension": [{"url": f"{_KBV}KBV_EX_ERP_DosageFlag", "valueBoolean": v["req_dosage_flag"]}]
    }
    if v["req_dosage"] is not None:
        dose["text"] = v["req_dosage"]
    return {
        "resourceType": "MedicationRequest",
        "id": v["req_id"],
        "meta": _meta("KBV_PR_ERP_Prescription"),
        "extension": [
            _coding_ext(
                f"{_KBV}KBV_EX_FOR_StatusCoPayment",
                f"{_KBV_CS}KBV_CS_FOR_StatusCoPayment",
                v["req_co_payment"],
            ),
            {"url": f"{_KBV}KBV_EX_ERP_EmergencyServicesFee", "valueBoolean": False},
            {"url": f"{_KBV}KBV_EX_FOR_SER", "valueBoolean": False},
            {
                "extension": [{"url": "Kennzeichen", "valueBoolean": False}],
                "url": f"{_KBV}KBV_EX_ERP_Multiple_Prescription",
            },
        ],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": v["med_ref"]},
        "subject": {"reference": v["pat_ref"]},
        "authoredOn": v["authored"],
        "requester": {"reference": v["doc_ref"]},
        "insurance": [{"reference": v["cov_ref"]}],
        "dosageInstruction": [dose],
        "dispenseRequest": {"quantity": {"value": v["req_quantity"], "unit": "Packung"}},
        "substitution": {"allowedBoolean": v["req_substitution"]},
    }


def _medication(v: _Values) -> dict[str, Any]:
    return {
        "resourceType": "Medication",
        "id": v["med_id"],
        "meta": _meta("KBV_PR_ERP_Medication_PZN"),
        "extension": [
            {
                "url": f"{_KBV}KBV_EX_Base_Medication_Type",
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://snomed.info/sct",
                            "version": "http://snomed.info/sct/11000274103/version/20240515",
                            "code": "763158003",
                            "display": "Medicinal product (product)",
                        }
                    ]
                },
            },
            _coding_ext(
                f"{_KBV}KBV_EX_ERP_Medication_Category",
                f"{_KBV_CS}KBV_CS_ERP_Medication_Category",
                "00",
            ),
            {"url": f"{_KBV}KBV_EX_ERP_Medication_Vaccine", "valueBoolean": False},
            {"url": "http://fhir.de/StructureDefinition/normgroesse", "valueCode": v["med_norm"]},
        ],
        "code": {
            "coding": [{"system": "http://fhir.de/CodeSystem/ifa/pzn", "code": v["med_pzn"]}],
            "text": v["med_text"],
        },
        "form": {
            "coding": [
                {"system": f"{_KBV_CS}KBV_CS_SFHIR_KBV_DARREICHUNGSFORM", "code": v["med_form"]}
            ]
        },
        "amount": {
            "numerator": {
                "extension": [
                    {
                        "url": f"{_KBV}KBV_EX_ERP_Medication_PackagingSize",
                        "valueString": v["med_pack_size"],
                    }
                ],
                "unit": v["med_pack_unit"],
            },
            "denominator": {"value": 1},
        },
        "ingredient": [
            {
                "itemCodeableConcept": {"text": v["med_ingredient"]},
                "strength": {
                    "numerator": {"value": v["med_strength"], "unit": v["med_strength_unit"]},
                    "denominator": {"value": 1},
                },
            }
        ],
    }


def _patient(v: _Values) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": v["pat_id"],
        "meta": _meta("KBV_PR_FOR_Patient"),
        "identifier": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://fhir.de/CodeSystem/identifier-type-de-basis",
                            "code": "KVZ10",
                        }
                    ]
                },
                "system": v["pat_kvnr_system"],
                "value": v["pat_kvnr"],
            }
        ],
        "name": [_name(v, "pat")],
        "birthDate": v["pat_birth"],
        "address": [_address(v, "pat")],
    }


def _practitioner(v: _Values) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": v["doc_id"],
        "meta": _meta("KBV_PR_FOR_Practitioner"),
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "LANR"}
                    ]
                },
                "system": "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR",
                "value": v["doc_lanr"],
            }
        ],
        "name": [_name(v, "doc")],
        "qualification": [
            {
                "code": {
                    "coding": [{"system": f"{_KBV_CS}KBV_CS_FOR_Qualification_Type", "code": "00"}]
                }
            },
            {
                "code": {
                    "coding": [
                        {
                            "system": f"{_KBV_CS}KBV_CS_FOR_Berufsbezeichnung",
                            "code": "Berufsbezeichnung",
                        }
                    ],
                    "text": v["doc_specialty"],
                }
            },
        ],
    }


def _organization(v: _Values) -> dict[str, Any]:
    telecom: list[dict[str, Any]] = [{"system": "phone", "value": v["org_phone"]}]
    if v["org_email"] is not None:
        telecom.append({"system": "email", "value": v["org_email"]})
    return {
        "resourceType": "Organization",
        "id": v["org_id"],
        "meta": _meta("KBV_PR_FOR_Organization"),
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "BSNR"}
                    ]
                },
                "system": "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR",
                "value": v["org_bsnr"],
            }
        ],
        "name": v["org_name"],
        "telecom": telecom,
        "address": [_address(v, "doc")],
    }


def _coverage(v: _Values) -> dict[str, Any]:
    extensions = [
        _coding_ext(
            "http://fhir.de/StructureDefinition/gkv/besondere-personengruppe",
            f"{_KBV_CS}KBV_CS_SFHIR_KBV_PERSONENGRUPPE",
            "00",
        ),
        _coding_ext(
            "http://fhir.de/StructureDefinition/gkv/dmp-kennzeichen",
            f"{_KBV_CS}KBV_CS_SFHIR_KBV_DMP",
            v["cov_dmp"],
        ),
    ]
    if v["cov_wop"] is not None:
        extensions.append(
            _coding_ext(
                "http://fhir.de/StructureDefinition/gkv/wop",
                f"{_KBV_CS}KBV_CS_SFHIR_ITA_WOP",
                v["cov_wop"],
            )
        )
    extensions.append(
        _coding_ext(
            "http://fhir.de/StructureDefinition/gkv/versichertenart",
            f"{_KBV_CS}KBV_CS_SFHIR_KBV_VERSICHERTENSTATUS",
            v["cov_member"],
        )
    )
    return {
        "resourceType": "Coverage",
        "id": v["cov_id"],
        "meta": _meta("KBV_PR_FOR_Coverage"),
        "extension": extensions,
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://fhir.de/CodeSystem/versicherungsart-de-basis",
                    "code": v["cov_type"],
                }
            ]
        },
        "beneficiary": {"reference": v["pat_ref"]},
        "payor": [
            {
                "identifier": {"system": "http://fhir.de/sid/arge-ik/iknr", "value": v["cov_ik"]},
                "display": v["cov_insurer"],
            }
        ],
    }


def _build(v: _Values) -> dict[str, Any]:
    """The Bundle for drawn values ``v`` (structure depends only on which values are None)."""
    parts = (
        ("comp", _composition),
        ("req", _request),
        ("med", _medication),
        ("pat", _patient),
        ("doc", _practitioner),
        ("org", _organization),
        ("cov", _coverage),
    )
    return {
        "resourceType": "Bundle",
        "id": v["bundle_id"],
        "meta": _meta("KBV_PR_ERP_Bundle"),
        "identifier": {
            "system": "https://gematik.de/fhir/erp/NamingSystem/GEM_ERP_NS_PrescriptionId",
            "value": v["prescription_id"],
        },
        "type": "document",
        "timestamp": v["moment"],
        "entry": [{"fullUrl": v[f"{key}_ref"], "resource": build(v)} for key, build in parts],
    }


# ---------------------------------------------------------------- fast serialization

_encode_string: Callable[[str], str] = json.encoder.encode_basestring
_PLACEHOLDER = re.compile(r'"\\u0000([a-z_]+)\\u0000"')
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _Template:
    """Compact JSON text of one bundle shape, split at the holes for the drawn values."""

    __slots__ = ("fragments", "names", "unique")

    def __init__(self, shape: _Values) -> None:
        holes = {k: None if val is None else f"\x00{k}\x00" for k, val in shape.items()}
        pieces = _PLACEHOLDER.split(_DUMPS(_build(holes)))
        self.fragments: list[str] = pieces[0::2]
        self.names: list[str] = pieces[1::2]
        self.unique: tuple[str, ...] = tuple(sorted(set(self.names)))

    def render(self, v: _Values) -> str:
        encoded: dict[str, str] = {}
        for name in self.unique:
            value = v[name]
            if value.__class__ is str:
                encoded[name] = _encode_string(value)
            elif value is True or value is False:
                encoded[name] = "true" if value else "false"
            else:
                encoded[name] = _DUMPS(value)
        fragments = self.fragments
        out = [fragments[0]]
        for name, fragment in zip(self.names, fragments[1:], strict=True):
            out.append(encoded[name])
            out.append(fragment)
        return "".join(out)


def _to_json(v: _Values, cache: dict[tuple[str, ...], _Template]) -> str:
    shape = tuple(k for k, val in v.items() if val is None)
    template = cache.get(shape)
    if template is None:
        template = cache[shape] = _Template(v)
    return template.render(v)


# ---------------------------------------------------------------- public API


def _check_args(count: int, seed: int, patients: int | None) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
        raise InvalidInput(f"count must be an integer from 0 to {MAX_COUNT}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput("seed must be an integer")
    if patients is not None and (
        isinstance(patients, bool) or not isinstance(patients, int) or patients < 1
    ):
        raise InvalidInput("patients must be a positive integer or None")


def _draws(count: int, seed: int, patients: int | None) -> Iterator[_Values]:
    rng = random.Random(seed)  # noqa: S311 - synthetic test data, not a secret
    first_serial = 100_000_000_000 + rng.randrange(800_000_000_000 - count)
    practices = [_draw_practice(rng) for _ in range(_PRACTICES)]
    pool = [_draw_patient(rng) for _ in range(patients)] if patients is not None else None
    for i in range(count):
        patient = rng.choice(pool) if pool is not None else _draw_patient(rng)
        yield _draw(rng, first_serial + i, patient, rng.choice(practices))


def generate_bundles(
    count: int, seed: int, *, patients: int | None = None
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` synthetic KBV_PR_ERP_Bundle prescriptions, deterministic per ``seed``.

    Each yielded dict is freshly built (callers may mutate it). With ``patients=N`` the
    prescriptions are spread over a fixed pool of N patients (several per patient, as
    a hospital would hold them); by default every prescription has its own patient.
    Raises :class:`~patientkey.errors.InvalidInput` for a bad ``count``/``seed``.
    """
    _check_args(count, seed, patients)
    return (_build(v) for v in _draws(count, seed, patients))


def generate_json(count: int, seed: int, *, patients: int | None = None) -> Iterator[str]:
    """The same bundles as :func:`generate_bundles`, as compact JSON text (fast path)."""
    _check_args(count, seed, patients)
    cache: dict[tuple[str, ...], _Template] = {}
    return (_to_json(v, cache) for v in _draws(count, seed, patients))


def write_bundles(
    out_dir: str | os.PathLike[str],
    count: int,
    seed: int,
    *,
    patients: int | None = None,
) -> list[Path]:
    """Write ``count`` synthetic bundles as ``erp-NNNNNN.json`` files into ``out_dir``.

    The files hold exactly the bundles of :func:`generate_bundles` with the same
    arguments, as compact UTF-8 JSON. The directory is created if needed; files of the
    same name are overwritten (the same seed writes the same bytes). Returns the paths.
    """
    _check_args(count, seed, patients)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidInput(f"{out}: exists and is not a directory") from None
    except OSError as exc:
        raise InvalidInput(f"{out}: cannot create directory: {exc.strerror or exc}") from None
    width = max(6, len(str(max(count - 1, 0))))
    written: list[Path] = []
    try:
        for i, text in enumerate(generate_json(count, seed, patients=patients)):
            path = out / f"erp-{i:0{width}d}.json"
            path.write_bytes(text.encode("utf-8"))
            written.append(path)
    except OSError as exc:
        raise InvalidInput(f"{out}: cannot write bundles: {exc.strerror or exc}") from None
    return written
