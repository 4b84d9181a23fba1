"""Clinical records as the hospital holds them: FHIR R4 validation, import, display fields.

A *record* is one FHIR document the hospital can hand to a patient:

* a prescription Bundle (gematik/KBV ``KBV_PR_ERP_Bundle``, profile versions 1.1.0 and
  1.2) that contains exactly one ``MedicationRequest`` → record type ``"prescription"``;
* a standalone ``MedicationRequest`` (e.g. HL7 US Core) → ``"prescription"``;
* a ``DiagnosticReport`` (the "medical e-report" of the authorization design) → ``"report"``.

Anything else, and anything that is not valid FHIR, is refused with
:class:`~patientkey.errors.InvalidInput` whose message names the file, the JSON path of the
problem (rendered like ``entry[3].resource.subject``) and the reason.

FHIR version
------------
``fhir.resources`` 8 models FHIR R5 at its top level. PatientKey's clinical payloads are
FHIR R4 (4.0.1), so records are validated with the ``fhir.resources.R4B`` models (FHIR
4.3.0, the only R4-line release the package ships). R4B is a maintenance release of R4
whose changes are confined to the medication-definition, evidence and subscription
resources; ``Bundle``, ``Composition``, ``MedicationRequest``, ``Medication``,
``Patient``, ``Practitioner``, ``Organization``, ``Coverage`` and ``DiagnosticReport``
have the same JSON shape in R4 and R4B, so an R4 document validates unchanged.

What the validation checks is *structure*: element names, datatypes and their lexical
rules (dates, ids, decimals), cardinality, choice types (``medication[x]``) and nested
resource types. It does not check profiles (KBV/US Core constraints), terminology
bindings or the FHIR invariants; on top of the model PatientKey itself requires a
prescription Bundle to hold exactly one ``MedicationRequest`` whose medication
reference resolves inside the Bundle, and that a RESTful ``fullUrl`` agrees with its
resource's id and is unique. Inputs are also bounded before the model sees them: at most
:data:`MAX_RECORD_BYTES` of strict UTF-8 JSON (a BOM is tolerated), nesting depth at most
:data:`MAX_JSON_DEPTH`, no duplicate object keys, no ``NaN``/``Infinity``, no NUL
characters or unpaired surrogates, and every nested ``resourceType`` a known R4 resource.

Canonical bytes
---------------
:attr:`ClinicalRecord.canonical` is the *original* JSON document (not the model's
re-serialization, which normalizes some values, e.g. a ``+00:00`` offset to ``Z``)
re-serialized canonically: object keys sorted, no insignificant whitespace, strings in
UTF-8 without ``\\u`` escapes except where JSON requires them, and numbers exactly as
written (FHIR decimals carry precision, ``1.50`` ≠ ``1.5``; the model also sees them
as :class:`~decimal.Decimal`). The same document in any formatting gives the same
bytes, and they are what the hospital seals under the record's DEK.

Display fields versus platform metadata
---------------------------------------
:attr:`ClinicalRecord.summary` holds the fields the patient's wallet shows: medication
name, PZN, strength, dosage text, authored date, patient name, birth date, insurance
number, prescriber, diagnostic code, conclusion... These are health data. They exist in
plaintext only at the hospital and, after decryption, in the wallet; they are never
placed in anything the platform stores or sees.

:meth:`ClinicalRecord.metadata` is the only view meant for the platform and is
deliberately minimal: ``record_type``, ``p_id`` and ``size_bucket`` — nothing else.
Dates were considered and rejected: even a day-precision authored/issued date tells the
platform when a person saw a doctor, and correlated with the record type it narrows
down what happened; the wallet sorts by date after decryption instead.

* ``p_id`` is the caller's P_ID (the hospital's record id) when given. Otherwise it is
  an opaque id drawn at random when the record was loaded. It is deliberately *not* a
  hash of the content: a content hash is a deterministic function of health data, so
  the platform could confirm a guessed document (public examples, enumerable
  variations) or link two uploads of the same prescription.
* ``size_bucket`` is the canonical length rounded up to a power of two (at least
  1 KiB). The platform sees the ciphertext length anyway; the sealing layer should pad
  the plaintext to this bucket so that length is all the platform learns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypedDict

from pydantic import ValidationError

from patientkey.errors import InvalidInput, PayloadTooLarge

log = logging.getLogger(__name__)

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_PROBLEMS_PER_FILE",
    "MAX_RECORD_BYTES",
    "MIN_SIZE_BUCKET",
    "ClinicalRecord",
    "ImportResult",
    "PrescriptionSummary",
    "Problem",
    "RecordMetadata",
    "RecordType",
    "ReportSummary",
    "import_directory",
    "load_record",
    "size_bucket",
]

MAX_RECORD_BYTES: Final = 5 * 1024 * 1024
"""Largest accepted record file (5 MiB); the largest real example is ~30 KiB."""

MAX_JSON_DEPTH: Final = 64
"""Deepest accepted nesting of JSON arrays/objects; real prescriptions reach ~12."""

MAX_PROBLEMS_PER_FILE: Final = 5
"""How many problems of one file are spelled out in an error message."""

MIN_SIZE_BUCKET: Final = 1024

RecordType = Literal["prescription", "report"]

_PZN_SYSTEM: Final = "http://fhir.de/CodeSystem/ifa/pzn"
_KBV_MEDICATION_TYPE: Final = "https://fhir.kbv.de/CodeSystem/KBV_CS_ERP_Medication_Type"
_EXT_PACKAGING_SIZE: Final = (
    "https://fhir.kbv.de/StructureDefinition/KBV_EX_ERP_Medication_PackagingSize"
)
_EXT_NORMGROESSE: Final = "http://fhir.de/StructureDefinition/normgroesse"
_EXT_INGREDIENT_AMOUNT: Final = (
    "https://fhir.kbv.de/StructureDefinition/KBV_EX_ERP_Medication_Ingredient_Amount"
)

# KBV_CS_SFHIR_KBV_DARREICHUNGSFORM codes seen in e-prescriptions (display only).
_DOSAGE_FORMS: Final[Mapping[str, str]] = {
    "AMP": "Ampullen",
    "CRE": "Creme",
    "DOS": "Dosieraerosol",
    "FTA": "Filmtabletten",
    "GEL": "Gel",
    "HKP": "Hartkapseln",
    "IFE": "Injektionsflasche",
    "ILO": "Injektionslösung",
    "KAP": "Kapseln",
    "LOE": "Lösung",
    "PFT": "Pflaster transdermal",
    "PIK": "Pulver für ein Infusionslösungskonzentrat",
    "PUL": "Pulver",
    "RET": "Retardtabletten",
    "SAF": "Saft",
    "SAL": "Salbe",
    "SMT": "Schmelztabletten",
    "SUP": "Zäpfchen",
    "TAB": "Tabletten",
    "TRO": "Tropfen",
    "UTA": "Überzogene Tabletten",
}

_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_BAD_CHAR_REASON = "with a NUL character or an unpaired UTF-16 surrogate"
_ODD_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_NUMBER_HOLE = re.compile(r'"\\u0000#([^"\\]*)\\u0000"')
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_RESOURCE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_PYDANTIC_TAG = re.compile(r"^[a-z][a-z-]*\[.*\]$")
_P_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a file was refused: which file, where in the JSON, why."""

    file: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "path": self.path, "reason": self.reason}


class _Refused(Exception):
    """Internal: the problems found in one input (converted to InvalidInput at the edge)."""

    def __init__(self, problems: list[Problem], *, too_large: bool = False) -> None:
        super().__init__(problems)
        self.problems = problems
        self.too_large = too_large


def _refuse(name: str, path: str, reason: str) -> _Refused:
    return _Refused([Problem(name, path, reason)])


def _describe(problems: list[Problem]) -> str:
    shown = problems[:MAX_PROBLEMS_PER_FILE]
    text = "; ".join(f"{p.path}: {p.reason}" for p in shown)
    if len(problems) > len(shown):
        text += f"; and {len(problems) - len(shown)} more"
    return text


def _to_invalid(refused: _Refused) -> InvalidInput:
    name = refused.problems[0].file
    detail = f"{name}: not an acceptable FHIR record: {_describe(refused.problems)}"
    cls = PayloadTooLarge if refused.too_large else InvalidInput
    return cls(detail, errors=[p.as_dict() for p in refused.problems])


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, repr=False)
class PrescriptionSummary:
    """What the wallet shows for a prescription. Health data: never give to the platform."""

    medication: str | None = None
    pzn: str | None = None
    medication_code: str | None = None
    strength: str | None = None
    form: str | None = None
    package_size: str | None = None
    quantity: str | None = None
    dosage: str | None = None
    substitution_allowed: bool | None = None
    authored_on: str | None = None
    status: str | None = None
    prescription_id: str | None = None
    profile: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    insurance_number: str | None = None
    insurer: str | None = None
    prescriber: str | None = None
    organization: str | None = None

    def as_dict(self) -> dict[str, str | bool]:
        """The fields that are present, for display."""
        return _present(self)

    def __repr__(self) -> str:
        return _safe_repr(self)


@dataclass(frozen=True, slots=True, repr=False)
class ReportSummary:
    """What the wallet shows for a diagnostic report. Health data: never give to the platform."""

    title: str | None = None
    code: str | None = None
    category: str | None = None
    status: str | None = None
    effective: str | None = None
    issued: str | None = None
    conclusion: str | None = None
    result_count: int = 0
    presented_forms: int = 0
    patient_name: str | None = None
    performer: str | None = None

    def as_dict(self) -> dict[str, str | bool]:
        """The fields that are present, for display (counts as decimal strings)."""
        return _present(self)

    def __repr__(self) -> str:
        return _safe_repr(self)


def _safe_repr(summary: PrescriptionSummary | ReportSummary) -> str:
    """Names the fields that are present, never their values: reprs end up in logs."""
    return f"{type(summary).__name__}(<health data: {', '.join(_present(summary))}>)"


def _present(summary: PrescriptionSummary | ReportSummary) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for name in summary.__slots__:
        value = getattr(summary, name)
        if isinstance(value, bool | str):
            out[name] = value
        elif isinstance(value, int):
            out[name] = str(value)
    return out


class RecordMetadata(TypedDict):
    """Everything the platform may learn about a record (see the module docstring)."""

    record_type: RecordType
    p_id: str
    size_bucket: int


@dataclass(frozen=True, slots=True)
class ClinicalRecord:
    """One validated FHIR record, ready to be sealed for the patient.

    ``canonical`` is what gets encrypted; ``summary`` is for the wallet's display after
    decryption; :meth:`metadata` is the only part meant for the platform. The repr shows
    neither ``canonical`` nor the summary's values, so a logged record leaks no health data.
    """

    record_type: RecordType
    resource_type: str
    fhir_id: str | None
    canonical: bytes = field(repr=False)
    summary: PrescriptionSummary | ReportSummary = field(repr=False)
    source: str = field(default="<bytes>", compare=False)
    opaque_id: str = field(
        default_factory=lambda: "rec-" + secrets.token_hex(16), compare=False, repr=False
    )

    def metadata(self, p_id: str | None = None) -> RecordMetadata:
        """The platform-safe view: record type, record id and a size bucket — nothing else.

        ``p_id`` is the hospital's record id (P_ID); without it the random
        :attr:`opaque_id` drawn at load time is used.
        """
        if p_id is None:
            p_id = self.opaque_id
        elif not _P_ID.fullmatch(p_id):
            raise InvalidInput(
                "p_id must be 1-128 characters of letters, digits and . _ : - "
                "(and must not carry health data)"
            )
        return {
            "record_type": self.record_type,
            "p_id": p_id,
            "size_bucket": size_bucket(len(self.canonical)),
        }


def size_bucket(length: int) -> int:
    """``length`` rounded up to a power of two, at least :data:`MIN_SIZE_BUCKET`."""
    bucket = MIN_SIZE_BUCKET
    while bucket < length:
        bucket *= 2
    return bucket


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Every record of one directory import, in file-name order (``files[i]`` → ``records[i]``)."""

    directory: Path
    files: tuple[Path, ...]
    records: tuple[ClinicalRecord, ...]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ClinicalRecord]:
        return iter(self.records)

    def counts(self) -> dict[RecordType, int]:
        """How many records of each type were imported."""
        out: dict[RecordType, int] = {}
        for record in self.records:
            out[record.record_type] = out.get(record.record_type, 0) + 1
        return out


# --------------------------------------------------------------------------- public API


def load_record(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
) -> ClinicalRecord:
    """Read, validate and summarize one FHIR record.

    ``source`` is a file path (``str`` or path-like) or the document itself as bytes
    (JSON text must be passed as bytes, never as ``str``). ``name`` labels the input in
    error messages (default: the path, or ``<bytes>``).

    Raises :class:`~patientkey.errors.InvalidInput` (:class:`PayloadTooLarge` above
    :data:`MAX_RECORD_BYTES`) naming the file, the JSON path and the reason; the
    ``errors`` extension lists every problem as ``{"file", "path", "reason"}``.
    """
    try:
        return _load(source, name)
    except _Refused as refused:
        raise _to_invalid(refused) from None


def import_directory(
    directory: str | os.PathLike[str], *, recursive: bool = False, workers: int = 1
) -> ImportResult:
    """Load every ``*.json`` file of ``directory`` (and below, if ``recursive``), all or nothing.

    If any file is refused, raises :class:`~patientkey.errors.InvalidInput` listing every
    failing file with the path of its problem and the reason (``errors`` extension: one
    ``{"file", "path", "reason"}`` per problem) and returns nothing — the caller stores
    records only from a returned :class:`ImportResult`. A directory without ``*.json``
    files is refused too (an empty import is almost always a wrong path).

    FHIR model validation costs ~2 ms per prescription Bundle; ``workers > 1`` spreads
    large imports over that many processes (worth it from a few hundred files on).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise InvalidInput("workers must be an integer from 1 to 256")
    root = Path(directory)
    if not root.is_dir():
        raise InvalidInput(f"{root}: not a directory")
    pattern = "**/*.json" if recursive else "*.json"
    try:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
    except OSError as exc:
        raise InvalidInput(f"{root}: cannot list directory: {exc.strerror or exc}") from None
    if not files:
        raise InvalidInput(f"{root}: no *.json files to import")
    if workers > 1 and len(files) > 1:
        outcomes = _outcomes_in_processes(files, workers)
    else:
        outcomes = [_outcome(path) for path in files]
    records = [o for o in outcomes if isinstance(o, ClinicalRecord)]
    failed = [o for o in outcomes if not isinstance(o, ClinicalRecord)]
    if failed:
        lines = [f"{fs[0].file}: {_describe(fs)}" for fs in failed]
        detail = (
            f"{root}: {len(failed)} of {len(files)} files are not acceptable FHIR records; "
            "nothing was imported:\n  " + "\n  ".join(lines)
        )
        raise InvalidInput(detail, errors=[p.as_dict() for fs in failed for p in fs])
    return ImportResult(directory=root, files=tuple(files), records=tuple(records))


def _outcome(path: Path) -> ClinicalRecord | list[Problem]:
    """One file's record, or its problems (module level, so worker processes can run it)."""
    try:
        return _load(path, None)
    except _Refused as refused:
        return refused.problems


def _outcomes_in_processes(files: list[Path], workers: int) -> list[ClinicalRecord | list[Problem]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # "spawn": no fork of a possibly multi-threaded parent (server, test runner).
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(256, len(files) // (workers * 8)))
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(files)), mp_context=context) as pool:
            return list(pool.map(_outcome, files, chunksize=chunk))
    except BrokenProcessPool:
        # A worker could not start or died (e.g. no importable __main__, out of memory):
        # the import is still possible, just slower.
        log.warning("worker processes failed; importing %d files in-process", len(files))
        return [_outcome(path) for path in files]


# --------------------------------------------------------------------------- reading


def _load(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, name: str | None
) -> ClinicalRecord:
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        if memoryview(source).nbytes > MAX_RECORD_BYTES:
            raise _Refused(
                [Problem(label, "(file)", f"larger than the {MAX_RECORD_BYTES} byte limit")],
                too_large=True,
            )
        raw = bytes(source)
    else:
        path = Path(source)
        label = name or str(path)
        raw = _read_file(path, label)
    document, text = _parse(raw, label)
    return _build(document, text, label)


def _read_file(path: Path, label: str) -> bytes:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise _refuse(
            label, "(file)", f"cannot read: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(raw) > MAX_RECORD_BYTES:
        raise _Refused(
            [Problem(label, "(file)", f"larger than the {MAX_RECORD_BYTES} byte limit")],
            too_large=True,
        )
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _bad_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _parse(raw: bytes, label: str) -> tuple[Any, str]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refuse(label, "(file)", f"not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        document = json.loads(
            text,
            parse_float=Decimal,
            parse_constant=_bad_constant,
            object_pairs_hook=_no_duplicates,
        )
    except json.JSONDecodeError as exc:
        reason = f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise _refuse(label, "(file)", reason) from None
    except _DuplicateKeyError as exc:
        reason = f"not acceptable JSON: duplicate object key {_quote(exc.key)}"
        raise _refuse(label, "(file)", reason) from None
    except RecursionError:
        reason = f"not acceptable JSON: nested deeper than {MAX_JSON_DEPTH} levels"
        raise _refuse(label, "(file)", reason) from None
    except ValueError as exc:  # NaN/Infinity, integers beyond the digit limit
        raise _refuse(label, "(file)", f"not acceptable JSON: {exc}") from None
    # NUL and lone surrogates can only enter through \u escapes (strict UTF-8 and the
    # JSON grammar exclude them otherwise), so strings are inspected only if one is present.
    careful = _ODD_ESCAPE.search(text) is not None
    if not _tree_is_plain(document, careful=careful):
        _locate_tree_problems(document, label)
    return document, text


def _tree_is_plain(document: Any, *, careful: bool) -> bool:
    """Fast pass: depth, nested resourceType values and (if ``careful``) odd characters."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return False
        if isinstance(value, dict):
            if "resourceType" in value and _resource_type_problem(value["resourceType"]):
                return False
            if careful and any(_BAD_CHAR.search(key) for key in value):
                return False
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif careful and isinstance(value, str) and _BAD_CHAR.search(value):
            return False
    return True


def _locate_tree_problems(document: Any, label: str) -> None:
    """Slow pass, only after the fast one found something: raise with the JSON paths."""
    problems: list[Problem] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_JSON_DEPTH:
            reason = f"nested deeper than {MAX_JSON_DEPTH} levels"
            raise _refuse(label, _render(loc), reason)
        if isinstance(value, dict):
            key: str
            for key, item in value.items():
                if _BAD_CHAR.search(key):
                    raise _refuse(label, _render(loc), f"object key {_BAD_CHAR_REASON}")
                stack.append((item, (*loc, key)))
            if "resourceType" in value:
                problem = _resource_type_problem(value["resourceType"])
                if problem:
                    problems.append(Problem(label, _render((*loc, "resourceType")), problem))
        elif isinstance(value, list):
            stack.extend((item, (*loc, i)) for i, item in enumerate(value))
        elif isinstance(value, str) and _BAD_CHAR.search(value):
            raise _refuse(label, _render(loc), f"string {_BAD_CHAR_REASON}")
    if problems:
        raise _Refused(problems)


def _resource_type_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "resourceType must be a string"
    if not _RESOURCE_NAME.fullmatch(value) or not _is_resource(value):
        return f"unknown FHIR R4 resource type {_quote(value)}"
    return None


def _is_resource(name: str) -> bool:
    from fhir.resources import R4B

    try:
        klass = R4B.get_fhir_model_class(name)
    except ValueError:
        return False
    return bool(klass.has_resource_base())


# --------------------------------------------------------------------------- validation


_KINDS: Final[Mapping[str, RecordType]] = {
    "Bundle": "prescription",
    "MedicationRequest": "prescription",
    "DiagnosticReport": "report",
}


def _build(document: Any, text: str, label: str) -> ClinicalRecord:
    if not isinstance(document, dict):
        raise _refuse(label, "(root)", "a FHIR resource must be a JSON object")
    resource_type = document.get("resourceType")
    if resource_type is None:
        raise _refuse(label, "resourceType", "missing: not a FHIR resource")
    if resource_type not in _KINDS:
        reason = (
            f"{_quote(resource_type)} is not a record PatientKey accepts "
            "(Bundle with a MedicationRequest, MedicationRequest or DiagnosticReport)"
        )
        raise _refuse(label, "resourceType", reason)
    _validate(resource_type, document, label)
    summary: PrescriptionSummary | ReportSummary
    if resource_type == "Bundle":
        summary = _bundle_summary(document, label)
    elif resource_type == "MedicationRequest":
        summary = _standalone_prescription(document, label)
    else:
        summary = _report_summary(document)
    return ClinicalRecord(
        record_type=_KINDS[resource_type],
        resource_type=resource_type,
        fhir_id=_s(document.get("id")),
        canonical=_canonical(text),
        summary=summary,
        source=label,
    )


def _model_class(resource_type: str) -> Any:
    from fhir.resources import R4B

    return R4B.get_fhir_model_class(resource_type)


def _validate(resource_type: str, document: dict[str, Any], label: str) -> None:
    klass = _model_class(resource_type)
    try:
        # fhir.resources emits no warnings while validating (checked over the sample data
        # and the fuzz tests, which run with warnings as errors), so none are filtered.
        klass.model_validate(document)
    except ValidationError as exc:
        problems = [
            Problem(label, _render(_clean_loc(err["loc"])), _reason(err))
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise _Refused(
            problems or [Problem(label, "(root)", "rejected by the FHIR model")]
        ) from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # fhir_core signals a few malformed shapes with plain exceptions; the message
        # may echo input, so only the exception type is reported.
        reason = f"rejected by the FHIR R4 model ({type(exc).__name__})"
        raise _refuse(label, "(root)", reason) from None


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    parts = [p for p in loc if not (isinstance(p, str) and _PYDANTIC_TAG.fullmatch(p))]
    if parts and parts[-1] in {"root", "__root__"}:
        parts.pop()
    return tuple(parts)


def _reason(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "json_invalid":
        return "expected a JSON object"
    if kind == "extra_forbidden":
        return "not an element of this FHIR type"
    if kind == "missing" or str(kind).endswith(".missing"):
        return "required element is missing"
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    return message if len(message) <= 200 else message[:197] + "..."


def _render(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{_quote(part)}]"
    return out or "(root)"


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return json.dumps(text)


# --------------------------------------------------------------------------- canonical


def _number_hole(token: str) -> str:
    return f"\x00#{token}\x00"


def _canonical(text: str) -> bytes:
    """Canonical UTF-8 JSON of an already checked document (see the module docstring).

    Numbers are parsed into placeholder strings holding their original text, so that
    ``json.dumps`` (sorted keys, compact, no ASCII escaping) can be used and the text
    put back afterwards: numbers come out exactly as written. Placeholders cannot
    collide with real strings because NUL in strings is refused by ``_parse``.
    """
    document = json.loads(text, parse_float=_number_hole, parse_int=_number_hole)
    out = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _NUMBER_HOLE.sub(lambda m: m.group(1), out).encode("utf-8")


# --------------------------------------------------------------------------- extraction
#
# Extraction reads the parsed JSON (already validated by the model), defensively: every
# accessor tolerates a missing element or an unexpected shape and yields None.


def _s(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _first(value: Any) -> dict[str, Any]:
    items = _l(value)
    return _d(items[0]) if items else {}


def _num(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        return str(value)
    return _s(value)


def _join(parts: list[str | None], sep: str = " ") -> str | None:
    text = sep.join(p for p in parts if p)
    return text or None


def _extension(element: Any, url: str) -> dict[str, Any]:
    for ext in _l(_d(element).get("extension")):
        if _d(ext).get("url") == url:
            return _d(ext)
    return {}


def _concept_text(concept: Any) -> str | None:
    c = _d(concept)
    text = _s(c.get("text"))
    if text:
        return text
    for coding in _l(c.get("coding")):
        display = _s(_d(coding).get("display"))
        if display:
            return display
    return None


def _coding_ref(concept: Any, *, skip: frozenset[str] = frozenset()) -> str | None:
    for coding in _l(_d(concept).get("coding")):
        system, code = _s(_d(coding).get("system")), _s(_d(coding).get("code"))
        if code and system not in skip:
            return f"{system}|{code}" if system else code
    return None


def _quantity(value: Any) -> str | None:
    q = _d(value)
    return _join([_num(q.get("value")), _s(q.get("unit")) or _s(q.get("code"))])


def _ratio(value: Any) -> str | None:
    r = _d(value)
    numerator = _quantity(r.get("numerator"))
    if not numerator:
        return _s(_extension(r, _EXT_INGREDIENT_AMOUNT).get("valueString"))
    den = _d(r.get("denominator"))
    den_value, den_unit = _num(den.get("value")), _s(den.get("unit")) or _s(den.get("code"))
    if den_unit or (den_value and den_value not in {"1", "1.0"}):
        return f"{numerator}/{_join([den_value, den_unit])}"
    return numerator


def _human_name(names: Any) -> str | None:
    chosen = _first(names)
    for name in _l(names):
        if _d(name).get("use") == "official":
            chosen = _d(name)
            break
    text = _s(chosen.get("text"))
    if text:
        return text
    parts: list[str | None] = [_s(p) for p in _l(chosen.get("prefix"))]
    parts += [_s(g) for g in _l(chosen.get("given"))]
    parts.append(_s(chosen.get("family")))
    parts += [_s(p) for p in _l(chosen.get("suffix"))]
    return _join(parts)


class _Index:
    """The entries of one Bundle, and reference resolution among them.

    Construction also checks the two Bundle rules the model does not: ``fullUrl`` is
    unique (bdl-7), and a RESTful ``fullUrl`` agrees with ``Resource.id`` ("The fullUrl
    SHALL NOT disagree with the id in the resource", R4 ``Bundle.entry.fullUrl``).
    """

    def __init__(self, bundle: dict[str, Any], label: str) -> None:
        self.by_url: dict[str, dict[str, Any]] = {}
        self.by_type_id: dict[tuple[str, str], dict[str, Any]] = {}
        self.url_of: dict[int, str] = {}
        self.entries: list[tuple[int, dict[str, Any]]] = []
        problems: list[Problem] = []
        for i, entry in enumerate(_l(bundle.get("entry"))):
            resource = _d(_d(entry).get("resource"))
            if not resource:
                continue
            self.entries.append((i, resource))
            rtype, rid = _s(resource.get("resourceType")), _s(resource.get("id"))
            url = _s(_d(entry).get("fullUrl"))
            if url:
                if url in self.by_url:
                    reason = "fullUrl is not unique in this Bundle"
                    problems.append(Problem(label, f"entry[{i}].fullUrl", reason))
                elif rid and not url.startswith("urn:") and not url.endswith(f"/{rtype}/{rid}"):
                    reason = f"fullUrl disagrees with the resource id {_quote(rid)}"
                    problems.append(Problem(label, f"entry[{i}].fullUrl", reason))
                self.by_url.setdefault(url, resource)
                self.url_of[id(resource)] = url
            if rtype and rid:
                self.by_type_id.setdefault((rtype, rid), resource)
        if problems:
            raise _Refused(problems)

    def of_type(self, resource_type: str) -> list[tuple[int, dict[str, Any]]]:
        return [(i, r) for i, r in self.entries if r.get("resourceType") == resource_type]

    def resolve(
        self, reference: Any, within: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The entry ``reference`` points at: by fullUrl, relative to ``within``, or Type/id."""
        ref = _s(_d(reference).get("reference"))
        if not ref:
            return None
        if ref in self.by_url:
            return self.by_url[ref]
        parts = ref.split("/")
        if len(parts) != 2:
            return None
        base_url = self.url_of.get(id(within)) if within is not None else None
        if base_url and "://" in base_url:
            base = base_url.rsplit("/", 2)[0]
            if f"{base}/{ref}" in self.by_url:
                return self.by_url[f"{base}/{ref}"]
        return self.by_type_id.get((parts[0], parts[1]))


def _contained(resource: dict[str, Any], reference: Any) -> dict[str, Any] | None:
    ref = _s(_d(reference).get("reference"))
    if not ref or not ref.startswith("#"):
        return None
    for item in _l(resource.get("contained")):
        if _d(item).get("id") == ref[1:]:
            return _d(item)
    return None


def _bundle_summary(bundle: dict[str, Any], label: str) -> PrescriptionSummary:
    index = _Index(bundle, label)
    requests = index.of_type("MedicationRequest")
    if not requests:
        reason = (
            "Bundle contains no MedicationRequest: only prescription Bundles "
            "(KBV_PR_ERP_Bundle) are accepted"
        )
        raise _refuse(label, "entry", reason)
    if len(requests) > 1:
        reason = f"a prescription Bundle holds exactly one MedicationRequest, found {len(requests)}"
        raise _refuse(label, f"entry[{requests[1][0]}].resource", reason)
    position, request = requests[0]
    where = f"entry[{position}].resource"

    medication: dict[str, Any] | None = None
    if "medicationReference" in request:
        reference = request.get("medicationReference")
        medication = _contained(request, reference) or index.resolve(reference, request)
        if medication is None or medication.get("resourceType") != "Medication":
            reason = "does not resolve to a Medication in this Bundle"
            raise _refuse(label, f"{where}.medicationReference.reference", reason)

    patient = index.resolve(request.get("subject"), request)
    if patient is None or patient.get("resourceType") != "Patient":
        patient = next((r for _, r in index.of_type("Patient")), None)
    prescriber = index.resolve(request.get("requester"), request)
    if prescriber is not None and prescriber.get("resourceType") == "PractitionerRole":
        prescriber = index.resolve(prescriber.get("practitioner"), prescriber) or prescriber
    coverage = index.resolve(_first(request.get("insurance")), request)
    if coverage is None:
        coverage = next((r for _, r in index.of_type("Coverage")), None)
    organization = None
    composition = next((r for _, r in index.of_type("Composition")), None)
    if composition is not None:
        organization = index.resolve(composition.get("custodian"), composition)
    if organization is None:
        organization = next((r for _, r in index.of_type("Organization")), None)

    identifier = _d(bundle.get("identifier"))
    return _prescription(
        request,
        medication,
        prescription_id=_s(identifier.get("value")),
        profile=_s(_first_str(_d(bundle.get("meta")).get("profile"))),
        patient=patient,
        prescriber=prescriber,
        coverage=coverage,
        organization=organization,
    )


def _first_str(values: Any) -> str | None:
    items = _l(values)
    return _s(items[0]) if items else None


def _standalone_prescription(request: dict[str, Any], label: str) -> PrescriptionSummary:
    medication = None
    reference = request.get("medicationReference")
    ref = _s(_d(reference).get("reference"))
    if ref and ref.startswith("#"):
        medication = _contained(request, reference)
        if medication is None or medication.get("resourceType") != "Medication":
            reason = "does not resolve to a contained Medication"
            raise _refuse(label, "medicationReference.reference", reason)
    return _prescription(
        request,
        medication,
        prescription_id=_s(_first(request.get("identifier")).get("value")),
        profile=_first_str(_d(request.get("meta")).get("profile")),
        patient=None,
        prescriber=None,
        coverage=None,
        organization=None,
    )


def _prescription(
    request: dict[str, Any],
    medication: dict[str, Any] | None,
    *,
    prescription_id: str | None,
    profile: str | None,
    patient: dict[str, Any] | None,
    prescriber: dict[str, Any] | None,
    coverage: dict[str, Any] | None,
    organization: dict[str, Any] | None,
) -> PrescriptionSummary:
    med = medication or {}
    concept = (
        med.get("code") if medication is not None else request.get("medicationCodeableConcept")
    )
    name = _concept_text(concept)
    if not name and medication is None:
        name = _s(_d(request.get("medicationReference")).get("display"))
    ingredients = [_d(i) for i in _l(med.get("ingredient"))]
    form = _dosage_form(med.get("form"))
    if not name and ingredients:
        name = _join(
            [
                _join([_concept_text(i.get("itemCodeableConcept")), _ratio(i.get("strength"))])
                for i in ingredients
            ],
            sep=" + ",
        )
        name = _join([name, form]) if name else None
    strength = _join([_ratio(i.get("strength")) for i in ingredients], sep=" + ")

    pzn = None
    for coding in _l(_d(concept).get("coding")):
        if _d(coding).get("system") == _PZN_SYSTEM:
            pzn = _s(_d(coding).get("code"))
            break

    amount = _d(med.get("amount"))
    numerator = _d(amount.get("numerator"))
    pack = _join(
        [
            _s(_extension(numerator, _EXT_PACKAGING_SIZE).get("valueString"))
            or _num(numerator.get("value")),
            _s(numerator.get("unit")),
        ]
    )
    norm = _s(_extension(med, _EXT_NORMGROESSE).get("valueCode"))
    package_size = f"{pack} ({norm})" if pack and norm else pack or norm

    dosage = _join(
        [
            _s(_d(d).get("text")) or _s(_d(d).get("patientInstruction"))
            for d in _l(request.get("dosageInstruction"))
        ],
        sep="; ",
    )
    substitution = _d(request.get("substitution")).get("allowedBoolean")

    patient_name = _human_name(patient.get("name")) if patient else None
    if not patient_name:
        patient_name = _s(_d(request.get("subject")).get("display"))
    prescriber_name = _human_name(prescriber.get("name")) if prescriber else None
    if not prescriber_name:
        prescriber_name = _s(_d(request.get("requester")).get("display"))
    insurer = None
    if coverage:
        insurer = _s(_first(coverage.get("payor")).get("display"))

    return PrescriptionSummary(
        medication=name,
        pzn=pzn,
        medication_code=None
        if pzn
        else _coding_ref(concept, skip=frozenset({_KBV_MEDICATION_TYPE})),
        strength=strength,
        form=form,
        package_size=package_size,
        quantity=_quantity(_d(request.get("dispenseRequest")).get("quantity")),
        dosage=dosage,
        substitution_allowed=substitution if isinstance(substitution, bool) else None,
        authored_on=_s(request.get("authoredOn")),
        status=_s(request.get("status")),
        prescription_id=prescription_id,
        profile=profile,
        patient_name=patient_name,
        patient_birth_date=_s(patient.get("birthDate")) if patient else None,
        insurance_number=_insurance_number(patient),
        insurer=insurer,
        prescriber=prescriber_name,
        organization=_s(organization.get("name")) if organization else None,
    )


def _dosage_form(form: Any) -> str | None:
    text = _s(_d(form).get("text"))
    if text:
        return text
    for coding in _l(_d(form).get("coding")):
        code = _s(_d(coding).get("code"))
        display = _s(_d(coding).get("display"))
        if display or code:
            return display or _DOSAGE_FORMS.get(code or "", code)
    return None


def _insurance_number(patient: dict[str, Any] | None) -> str | None:
    if not patient:
        return None
    identifiers = [_d(i) for i in _l(patient.get("identifier"))]
    for ident in identifiers:
        if (_s(ident.get("system")) or "").endswith("kvid-10"):
            return _s(ident.get("value"))
    return _s(identifiers[0].get("value")) if identifiers else None


def _report_summary(report: dict[str, Any]) -> ReportSummary:
    period = _d(report.get("effectivePeriod"))
    effective = _s(report.get("effectiveDateTime")) or _s(period.get("start"))
    return ReportSummary(
        title=_concept_text(report.get("code")),
        code=_coding_ref(report.get("code")),
        category=_join([_concept_text(c) for c in _l(report.get("category"))], sep=", "),
        status=_s(report.get("status")),
        effective=effective,
        issued=_s(report.get("issued")),
        conclusion=_s(report.get("conclusion")),
        result_count=len(_l(report.get("result"))),
        presented_forms=len(_l(report.get("presentedForm"))),
        patient_name=_s(_d(report.get("subject")).get("display")),
        performer=_s(_first(report.get("performer")).get("display")),
    )
