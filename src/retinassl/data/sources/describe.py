"""What each dataset source takes: its options (from the loader's signature and the ``Args:``
section of its docstring) and one example command, for ``retinassl data list`` and
``retinassl data inspect --help``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

#: One working example per source (``retinassl data inspect <source> <EXAMPLES[source]>``).
EXAMPLES: dict[str, str] = {
    "synthetic": "-o n_images=20 -o size=256 -o seed=1",
    "idrid": "-o root=/data/idrid -o parts=[B]",
    "drive": "-o root=/data/drive",
    "stare": "-o root=/data/stare",
    "rfmid": "-o root=/data/rfmid -o split=train",
    "eyepacs": "-o root=/data/eyepacs/train -o labels_csv=/data/eyepacs/trainLabels.csv",
    "mx_fundus_oct": "-o root=/data/mx_fundus_oct -o modality=fundus -o require=dr_any",
    "folder": "-o root=/data/eyes -o positive=glaucoma",
    "csv": "-o csv=/data/clinic/labels.csv -o root=/data/clinic -o 'columns={abnormal: diagnosis}'",
    "glob": "-o root=/data/drive -o 'image=*/images/*.tif' "
            "-o 'masks={mask_vessels: \"{folder}/1st_manual/{stem}_manual1.gif\"}' "
            "-o 'stem_regex=(?P<folder>[^/]+)/images/(?P<stem>\\d+)_' -o 'split=\"{folder}\"'",  # quoted: else a YAML mapping
}


#: Longest option description printed (the rest is in the loader's docstring).
MAX_HELP = 200


def option_help(loader: Callable) -> dict[str, str]:
    """Option name -> its description (at most MAX_HELP characters) in the loader's ``Args:`` section."""
    doc = inspect.getdoc(loader) or ""
    section = re.search(r"^Args:\n(.*?)(?:^\S|\Z)", doc, flags=re.S | re.M)
    out: dict[str, str] = {}
    if section is None:
        return out
    name = None
    for line in section.group(1).splitlines():
        match = re.match(r"^    (\*{0,2}\w[\w, *]*?):\s*(.*)$", line)
        if match:
            name = match.group(1)
            out[name] = match.group(2)
        elif name is not None and line.strip():
            out[name] += " " + line.strip()
    help_by_option: dict[str, str] = {}
    for names, text in out.items():
        text = re.sub(r"``|:\w+:`~?|`", "", text).strip()
        if len(text) > MAX_HELP:
            text = text[:MAX_HELP].rsplit(" ", 1)[0] + " ..."
        for option in (n.strip().lstrip("*") for n in names.split(",")):
            help_by_option[option] = text
    return help_by_option


def describe_source(name: str, loader: Callable) -> list[str]:
    """Lines describing source ``name``: its options (default or ``required``, and what each
    means) and an example command."""
    helps = option_help(loader)
    lines = []
    for option, parameter in inspect.signature(loader).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            lines.append(f"    **{option}: {helps.get(option, 'further generator settings')}")
            continue
        default = "required" if parameter.default is inspect.Parameter.empty else f"default {parameter.default!r}"
        text = helps.get(option, "")
        lines.append(f"    {option} ({default}){': ' + text if text else ''}")
    lines.append(f"    e.g. retinassl data inspect {name} {EXAMPLES.get(name, '-o root=PATH')}")
    return lines


__all__ = ["EXAMPLES", "option_help", "describe_source"]
