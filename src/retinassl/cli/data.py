"""``retinassl data list|inspect|prepare``: what data the toolkit reads, what is in a dataset, and
turning it into a manifest + preprocessed cache."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand

from retinassl.cli.common import DATA_ROOT, SKIP_BAD

app = typer.Typer(no_args_is_help=True, help="Dataset sources, inspection and preparation.")


def _options(option: list[str] | None) -> dict:
    from retinassl.config import apply_overrides

    return apply_overrides({}, option or [])


@app.command("list")
def list_() -> None:
    """List dataset sources, packaged presets, encoders and training methods."""
    from retinassl.config import preset_names
    from retinassl.data.sources import SOURCES
    from retinassl.data.sources.describe import describe_source
    from retinassl.methods.base import method_names
    from retinassl.models import encoder_names
    import retinassl.methods  # noqa: F401  (registers every method)

    typer.echo("dataset sources and their options (retinassl data inspect SOURCE -o key=value; in a "
               "config: data.source / data.options):")
    for name, loader in sorted(SOURCES.items()):
        doc = (loader.__doc__ or "").strip().splitlines()
        typer.echo(f"  {name:10s} {doc[0] if doc else ''}")
        for line in describe_source(name, loader):
            typer.echo(line)
    typer.echo("presets (retinassl train PRESET / retinassl sweep PRESET): " + ", ".join(preset_names()))
    typer.echo("encoders: " + ", ".join(encoder_names()))
    typer.echo("methods: " + ", ".join(method_names()))


class SourcesHelp(TyperCommand):
    """``data inspect --help`` ends with every source's options and an example (built when the help
    is shown, so the command line starts without importing the sources)."""

    def format_help(self, ctx, formatter):  # type: ignore[no-untyped-def]
        from rich.markup import escape

        from retinassl.data.sources import SOURCES
        from retinassl.data.sources.describe import describe_source

        blocks = [f"{name}: " + escape("\n".join(line.strip() for line in describe_source(name, loader)))
                  for name, loader in sorted(SOURCES.items())]
        self.epilog = "Sources and their options:\n\n" + "\n\n".join(blocks)
        return super().format_help(ctx, formatter)


@app.command(cls=SourcesHelp)
def inspect(source: str = typer.Argument(..., help="A source name (idrid, drive, ...) or a manifest CSV."),
            option: list[str] = typer.Option(None, "--option", "-o",
                                              help="Source option key=value (e.g. root=/data/idrid); "
                                                   "`retinassl data list` lists every source's options "
                                                   "with an example."),
            duplicates: bool = typer.Option(False, "--duplicates",
                                            help="Also look for near-duplicate images across splits.")) -> None:
    """Summarise a dataset: images per split, label distributions, masks and paired data present."""
    from retinassl.data.manifest import MASK_COLUMNS, PAIRED_COLUMNS, Manifest, label_columns
    from retinassl.data.sources import load_source

    if source.endswith(".csv"):
        manifest = Manifest.load(Path(source))
    else:
        manifest = load_source(source, **_options(option))
    frame = manifest.frame
    typer.echo(f"{manifest.name}: {len(frame)} images under {manifest.root}")
    typer.echo("  split: " + ", ".join(f"{k or '(none)'}={v}" for k, v in frame["split"].value_counts().items()))
    typer.echo(f"  patients: {frame['patient'].replace('', None).nunique()}  eyes: "
               + ", ".join(f"{k or '?'}={v}" for k, v in frame["eye"].value_counts().items()))
    for column in label_columns(frame.columns):
        counts = frame[column].value_counts(dropna=False).sort_index()
        typer.echo(f"  {column}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if "class_name" in frame.columns:  # the folder source: each class folder and the label it gave
        mapped = next((c for c in ("abnormal", "class_index") if c in frame.columns), None)
        per_class = frame.groupby("class_name", sort=True)
        typer.echo("  class folders: " + ", ".join(
            f"{name}={len(rows)}" + (f" ({mapped}={rows[mapped].iloc[0]})" if mapped else "")
            for name, rows in per_class))
    for column in MASK_COLUMNS + PAIRED_COLUMNS:
        if column in frame.columns:
            typer.echo(f"  {column}: {int(frame[column].notna().sum() - (frame[column] == '').sum())} files")
    if duplicates:
        from retinassl.data.duplicates import find_duplicates

        pairs = find_duplicates(manifest)
        typer.echo(f"  near-duplicate pairs: {len(pairs)}")
        typer.echo(pairs.to_string(index=False) if len(pairs) else "  (none)")


@app.command()
def prepare(config: str = typer.Argument(..., help="A YAML config or preset whose data/preprocess "
                                                   "sections describe the dataset."),
            overrides: list[str] = typer.Argument(None, show_default=False),
            out: Path = typer.Option(Path("manifest.csv"), "--out", help="Where to write the manifest."),
            skip_bad: bool = SKIP_BAD, data_root: Path = DATA_ROOT) -> None:
    """Build the manifest and fill the preprocessed-image cache (decodes every image once)."""
    from retinassl.config import Section, load_config
    from retinassl.data.loading import prepare as prepare_data
    from retinassl.config import DataConfig
    from retinassl.data.preprocess import PreprocessConfig

    class PrepareConfig(Section):
        model_config = Section.model_config | {"extra": "ignore"}
        data: DataConfig = DataConfig()
        preprocess: PreprocessConfig = PreprocessConfig()

    overrides = (overrides or []) + (["data.skip_bad=true"] if skip_bad else [])
    check_prepare_keys(config, overrides)
    cfg = load_config(PrepareConfig, config, overrides, data_root)
    check_out(out, cfg.data)  # before any image is decoded
    prepared = prepare_data(cfg.data, cfg.preprocess)
    prepared.manifest.save(out)
    typer.echo(f"{len(prepared)} images prepared at {cfg.preprocess.size}px; manifest: {out}")
    if prepared.skipped:
        typer.echo(f"{len(prepared.skipped)} skipped:")
        for item, problem in prepared.skipped:
            typer.echo(f"  {item}: {problem}")


# every command's config: data prepare reads the data/preprocess sections of any of them
CONFIG_MODELS = ("retinassl.jobs.train:TrainConfig", "retinassl.jobs.pretrain:PretrainConfig",
                 "retinassl.jobs.cross_modal:CrossModalRunConfig", "retinassl.jobs.oct_layers:LayerTrainConfig",
                 "retinassl.jobs.patch_config:SemisupTrainConfig", "retinassl.jobs.patch_config:SSLGANExperimentConfig",
                 "retinassl.jobs.segment_config:SegmentConfig", "retinassl.sweeps.transfer_config:TransferConfig")


def known_top_level_keys() -> set[str]:
    """The top-level keys of every command's config (and a sweep's ``kind``/``budgets``)."""
    import importlib

    keys = {"kind", "budgets"}
    for spec in CONFIG_MODELS:
        module, _, name = spec.partition(":")
        keys |= set(getattr(importlib.import_module(module), name).model_fields)
    return keys


def check_prepare_keys(config: str, overrides: list[str]) -> None:
    """A ConfigError naming the file (or override) for a top-level key no command knows (a typo
    such as ``preprocesss`` would otherwise be ignored silently)."""
    from retinassl.config import read_yaml
    from retinassl.errors import ConfigError

    known = known_top_level_keys()
    for key in read_yaml(config):
        if key not in known:
            raise ConfigError(f"{config}: unknown top-level key {key!r} (data prepare reads 'data' "
                              f"and 'preprocess'; the commands' configs know {', '.join(sorted(known))})")
    for item in overrides:
        key = item.split("=", 1)[0].split(".", 1)[0].strip()
        if key not in known:
            raise ConfigError(f"override {item!r}: unknown top-level key {key!r}")


def check_out(out: Path, data: "DataConfig") -> None:  # noqa: F821
    """Refuse an ``--out`` that is a directory or the input CSV itself (it would be overwritten)."""
    from retinassl.errors import ConfigError

    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the manifest's file name (e.g. {out / 'manifest.csv'})")
    inputs = []
    if data.manifest is not None:
        inputs.append(Path(data.manifest))
    csv = data.options.get("csv") if isinstance(data.options, dict) else None
    if isinstance(csv, str):
        inputs.append(Path(csv))
        root = data.options.get("root")
        if isinstance(root, str):
            inputs.append(Path(root) / csv)
    for source in inputs:
        if source.exists() and out.exists() and source.resolve() == out.resolve() or \
                source.absolute() == out.absolute():
            raise ConfigError(f"--out {out} is the input CSV; writing the manifest there would overwrite "
                              f"it: give another file name")
