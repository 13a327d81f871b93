"""Patient identifiers -> a salted, one-way patient key.

OCT exports carry direct identifiers (DICOM PatientName, PatientID, PatientBirthDate; the HEYEX
.vol/.xml patient ID, name and date of birth). The readers pass them to :func:`patient_key` and keep
only its result; the identifiers themselves are never stored in an
:class:`~retinassl.oct.volume.OCTVolume`, logged, written to an output or used in a file name.
Other identifying DICOM attributes (AccessionNumber, InstitutionName, ReferringPhysicianName,
OtherPatientIDs, addresses...) are not read at all.

The key is ``"pk-"`` + the first 16 hex digits of BLAKE2b(salt, canonical identifiers). The
identifiers are canonicalised (trimmed, upper case, DICOM ``^`` name separators as spaces) so that
the same patient exported twice gets the same key; the patient ID is used when present (a patient's
visits share it), otherwise name + date of birth.

The salt makes the key useless for re-identification by hashing guessed IDs. It comes from the
environment variable ``RETINASSL_PATIENT_SALT`` (set the same value on every machine whose keys must
agree, e.g. a site secret), otherwise from the file ``<cache dir>/patient-salt`` created once with 32
random bytes (mode 0600; see :func:`retinassl.data.cache.default_cache_dir`). Keys made with
different salts are unrelated.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

SALT_ENV = "RETINASSL_PATIENT_SALT"
SALT_FILE = "patient-salt"


def _salt_file() -> Path:
    from retinassl.data.cache import default_cache_dir

    return default_cache_dir() / SALT_FILE


def patient_salt() -> bytes:
    """The salt (see the module docstring): ``$RETINASSL_PATIENT_SALT`` or the per-installation
    salt file, created on first use."""
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode("utf-8")
    path = _salt_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:     # another process created it first
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode("utf-8")


def _canonical(value: object) -> str:
    text = "" if value is None else str(value)
    return " ".join(text.replace("^", " ").upper().split())


def patient_key(patient_id: object = None, name: object = None, birth_date: object = None,
                salt: bytes | None = None) -> str:
    """A salted one-way key for a patient, or ``""`` when no identifier is given.

    Args:
        patient_id: the export's patient ID (preferred: stable across visits).
        name: the patient's name (used with ``birth_date`` only when there is no ID).
        birth_date: date of birth, any text form.
        salt: the salt (default: :func:`patient_salt`).

    Returns:
        ``"pk-" + 16 hex digits``; the same inputs and salt always give the same key.
    """
    pid = _canonical(patient_id)
    if pid:
        material = "id:" + pid
    else:
        who = _canonical(name)
        born = _canonical(birth_date)
        if not who and not born:
            return ""
        material = f"name:{who}|born:{born}"
    key = salt if salt is not None else patient_salt()
    digest = hashlib.blake2b(material.encode("utf-8"), key=key[:64], digest_size=8,
                             person=b"retinassl-pk")
    return "pk-" + digest.hexdigest()


# -- file and folder names ------------------------------------------------------------------------
# Exports are often named after the patient (``DOE_JANE_PHI123456_OD.dcm`` in a folder
# ``DOE_JANE``), and manifest ids are often file stems. Commands that read OCT data register the
# paths and ids they were given; the run's log handlers (:class:`RedactFilter`), the error recorded in
# ``run.json`` and the names of figures then carry :func:`private_label` instead.

_PRIVATE: dict[str, str] = {}


def private_label(text: str, prefix: str = "file") -> str:
    """A salted one-way label for a path or id: ``"<prefix>-" + 12 hex digits``; the same text
    and salt always give the same label (so a user can tell two files apart without seeing their
    names)."""
    digest = hashlib.blake2b(str(text).encode("utf-8"), key=patient_salt()[:64], digest_size=6,
                             person=b"retinassl-fn")
    return f"{prefix}-{digest.hexdigest()}"


def register_private(values: object, prefix: str = "file") -> None:
    """Remember paths (every form: as given, absolute, resolved, and the file name) or ids whose
    text must not reach a stored output; :func:`redact` replaces them by their label."""
    items = [values] if isinstance(values, (str, os.PathLike)) else list(values)  # type: ignore[arg-type]
    for value in items:
        if value is None or str(value) in ("", "nan", "None"):
            continue
        text = str(value)
        label = "<" + private_label(text, prefix) + ">"
        forms = {text}
        if isinstance(value, os.PathLike) or os.sep in text or "." in text:
            path = Path(text)
            forms |= {str(path), str(path.absolute())}
            try:
                forms.add(str(path.resolve()))
            except OSError:
                pass
            if len(path.name) >= 4:
                forms.add(path.name)
        for form in forms:
            if len(form) >= 3:
                _PRIVATE.setdefault(form, label)


def redact(text: str) -> str:
    """``text`` with every registered path or id replaced by its label (longest first, so a full
    path goes before its file name)."""
    if not _PRIVATE or not text:
        return text
    for form in sorted(_PRIVATE, key=len, reverse=True):
        if form in text:
            text = text.replace(form, _PRIVATE[form])
    return text


class RedactFilter:
    """A :mod:`logging` filter that redacts every record's message (see :func:`redact`)."""

    def filter(self, record: object) -> bool:
        import logging

        if isinstance(record, logging.LogRecord) and _PRIVATE:
            message = redact(record.getMessage())
            record.msg, record.args = message, ()
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def redact_log_handlers() -> None:
    """Put :class:`RedactFilter` on every handler of the ``retinassl`` logger and the root logger
    (the run's ``logs/log.txt`` and the terminal), once each."""
    import logging

    for logger in (logging.getLogger("retinassl"), logging.getLogger()):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactFilter) for f in handler.filters):
                handler.addFilter(RedactFilter())
