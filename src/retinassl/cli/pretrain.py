"""``retinassl pretrain METHOD [CONFIG] [key=value ...]``: pretrain an encoder."""

from __future__ import annotations

from pathlib import Path

import typer

from retinassl.cli.common import (DATA_ROOT, RESUME, RUNS_DIR, SKIP_BAD, check_batch_config,
                                  refuse_finished, run_job, split_args, with_common_overrides)


def pretrain(method: str = typer.Argument(..., help="A pretraining method: rotation, "
                                          "relative_position, offset_heatmap, inpainting, "
                                          "autoencoder, simclr, mae, supervised (a label) or "
                                          "segmentation (masks, e.g. lesions)."),
             args: list[str] = typer.Argument(None, help="An optional CONFIG (a YAML file or packaged "
                                              "preset; default: pretrain-METHOD, synthetic data), then "
                                              "key=value overrides such as engine.max_steps=200 "
                                              "data.source=idrid data.options.root=PATH.",
                                              show_default=False),
             resume: Path = RESUME, runs_dir: Path = RUNS_DIR, skip_bad: bool = SKIP_BAD,
             allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Let model.init be a "
                                               "pickle-based .pth/.pt file (read with "
                                               "torch.load(weights_only=True))."),
             data_root: Path = DATA_ROOT) -> None:
    """Pretrain an encoder with a self-supervised method (or supervised normal/abnormal
    pretraining, or lesion segmentation) on a pool of images; labels are ignored unless `label`
    is set, masks unless `mask` is. Writes
    runs/<name>-<time>/ with the encoder checkpoint (encoder/), training curves (logs/csv) and a
    report."""
    from retinassl.config import config_data, load_config, preset_names, read_yaml, validate
    from retinassl.errors import ConfigError
    from retinassl.methods.base import method_names
    from retinassl.jobs.pretrain import PretrainConfig, run_pretrain
    from retinassl.io.rundir import RunDir
    from retinassl.models.initialize import check_encoder_inputs

    if method not in method_names():
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(method_names())}")
    source, overrides = split_args(args, f"pretrain-{method}")
    if resume is None and source == f"pretrain-{method}" and source not in preset_names():
        raise ConfigError(f"method {method!r} has no packaged preset {source}; give a CONFIG file "
                          f"(presets: {', '.join(p for p in preset_names() if p.startswith('pretrain-'))})")
    overrides = with_common_overrides(overrides, runs_dir, skip_bad)
    if allow_pickle:
        overrides.append("model.allow_pickle=true")
    if resume is not None:
        refuse_finished(resume, split_args(args, f"pretrain-{method}")[1])  # before resume marks it running
        cfg = load_config(PretrainConfig, RunDir(resume).config_file, overrides)  # a bad override: nothing changed
        check_encoder_inputs(cfg)
        run = RunDir.resume(resume)
    else:
        data = read_yaml(source)
        named = (data.get("method") or {}).get("name")
        if named is not None and named != method:
            raise ConfigError(f"{source} configures method {named!r}, not {method!r}")
        data = config_data(source, overrides + [f"method.name={method}"], data_root)
        cfg = validate(PretrainConfig, data, origin=source)
        check_batch_config(cfg)  # before the run directory exists
        check_encoder_inputs(cfg)
        run = RunDir.create(cfg.runs_dir, cfg.name)
    if cfg.method_name != method:
        raise ConfigError(f"{run.path} was a {cfg.method_name!r} run, not {method!r}")
    run.attach_log_file()
    typer.echo(f"run directory: {run.path}")
    encoder_dir, report = run_job(run, lambda: run_pretrain(cfg, run, resume=resume is not None),
                                  status=lambda out: {"encoder": str(out)})
    typer.echo(f"encoder: {encoder_dir}")
    typer.echo(f"report: {report}")
