"""An encoder is used on inputs prepared as it was trained: a checkpoint whose recorded preprocessing
differs from the run's (other than the size) is refused, naming each field and both values."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinassl.data.preprocess import PreprocessConfig
from retinassl.errors import ConfigError
from retinassl.models import build_encoder
from retinassl.models.checkpoint import save_encoder
from retinassl.models.initialize import check_init_preprocess


def _saved(path: Path, preprocess: PreprocessConfig | None) -> Path:
    return save_encoder(path, build_encoder("convnet", width=4), arch="convnet", kwargs={"width": 4},
                        preprocess=None if preprocess is None else preprocess.model_dump())


def test_an_encoder_is_refused_on_inputs_prepared_otherwise(tmp_path: Path) -> None:
    trained = PreprocessConfig(size=64, color_standardize=True, normalize="max")
    encoder = _saved(tmp_path / "enc", trained)
    # the same preparation, at any size (the resolution study): accepted, by folder or by JSON file
    for size in (64, 224):
        check_init_preprocess(str(encoder), trained.model_copy(update={"size": size}))
    check_init_preprocess(str(next(p for p in Path(encoder).glob("*.json"))), trained)
    with pytest.raises(ConfigError, match="color_standardize"):                # the JSON names the model too
        check_init_preprocess(str(next(p for p in Path(encoder).glob("*.json"))), PreprocessConfig(size=64))
    # without the colour standardisation it learnt with: refused, the field and both values named
    with pytest.raises(ConfigError, match=r"init lesions: .*preprocess\.color_standardize is False, "
                                          r"the encoder's True"):
        check_init_preprocess(str(encoder), PreprocessConfig(size=64), "init lesions")
    # every differing field is named, not only the first
    with pytest.raises(ConfigError) as caught:
        check_init_preprocess(str(encoder), PreprocessConfig(size=64, normalize="image", clahe=True))
    message = str(caught.value)
    assert all(f"preprocess.{k} is" in message for k in ("clahe", "color_standardize", "normalize"))
    assert "preprocess.size" not in message


def test_equal_inputs_spelt_otherwise_pass(tmp_path: Path) -> None:
    """What counts is what the network sees: the settings of an option that is off, one value standing for
    every channel, and "imagenet" for its own constants are not differences."""
    cases = [(PreprocessConfig(size=32, clahe_clip=4.0, background_sigma=0.1, color_target_mean=90.0),
              PreprocessConfig(size=32)),
             (PreprocessConfig(size=32, normalize="meanstd", normalize_mean=(0.5, 0.5, 0.5), normalize_std=(0.5,) * 3),
              PreprocessConfig(size=32, normalize="meanstd", normalize_mean=(0.5,), normalize_std=(0.5,))),
             (PreprocessConfig(size=32, normalize="imagenet"),
              PreprocessConfig(size=32, normalize="meanstd", normalize_mean=(0.485, 0.456, 0.406),
                               normalize_std=(0.229, 0.224, 0.225))),
             (PreprocessConfig(size=32, color_standardize=True, color_target_mean=128.0),
              PreprocessConfig(size=32, color_standardize=True, color_target_mean=(128.0, 128.0, 128.0)))]
    for i, (trained, given) in enumerate(cases):
        check_init_preprocess(str(_saved(tmp_path / f"enc{i}", trained)), given)
    # but a setting of an option that is on is one
    with pytest.raises(ConfigError, match="preprocess.clahe_clip is 2.0, the encoder's 4.0"):
        check_init_preprocess(str(_saved(tmp_path / "clahe", PreprocessConfig(size=32, clahe=True, clahe_clip=4.0))),
                              PreprocessConfig(size=32, clahe=True))
    # one gain for all channels is another input than the default gain per channel
    common = _saved(tmp_path / "gain", PreprocessConfig(size=32, color_standardize=True, color_gain="common"))
    with pytest.raises(ConfigError, match="preprocess.color_gain"):
        check_init_preprocess(str(common), PreprocessConfig(size=32, color_standardize=True))


def test_models_whose_encoder_saw_other_inputs_are_refused_as_such() -> None:
    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_models"
    with pytest.raises(ConfigError, match="is a vessel segmenter"):
        check_init_preprocess(str(legacy / "segmenter"), PreprocessConfig(size=32))
    with pytest.raises(ConfigError, match="is an OCT layer model"):
        check_init_preprocess(str(legacy / "layer_model"), PreprocessConfig(size=32))
    check_init_preprocess(str(legacy / "encoder"), PreprocessConfig(size=32, normalize="max"))  # recorded: max
    with pytest.raises(ConfigError, match="preprocess.normalize is 'image', the encoder's 'max'"):
        check_init_preprocess(str(legacy / "encoder"), PreprocessConfig(size=32, normalize="image"))


def test_scratch_foreign_weights_and_unrecorded_checkpoints_pass(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    given = PreprocessConfig(size=32, clahe=True)
    check_init_preprocess("scratch", given)
    with caplog.at_level("INFO", logger="retinassl.models.initialize"):
        check_init_preprocess(str(_saved(tmp_path / "bare", None)), given)     # records nothing: not checkable
    assert "records no preprocessing" in caplog.text
    weights = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file(build_encoder("convnet", width=4).state_dict(), str(weights))
    check_init_preprocess(str(weights), given)                                 # the user's to set
    # ...but a saved model's own weights file, named as if it were a foreign one, is that model
    saved = _saved(tmp_path / "enc", PreprocessConfig(size=32))
    with pytest.raises(ConfigError, match="preprocess.clahe is True, the encoder's False"):
        check_init_preprocess(str(Path(saved) / "model.safetensors"), given)


def test_pretraining_from_an_encoder_prepared_otherwise_stops_before_it_trains(tmp_path: Path) -> None:
    from retinassl.io.rundir import RunDir
    from retinassl.jobs.pretrain import PretrainConfig, run_pretrain

    encoder = _saved(tmp_path / "enc", PreprocessConfig(size=32, color_standardize=True))
    config = PretrainConfig.model_validate({
        "data": [{"source": "synthetic", "options": {"n_images": 4, "size": 32, "out_dir": str(tmp_path / "data")}}],
        "preprocess": {"size": 32},
        "model": {"arch": "convnet", "kwargs": {"width": 4}, "init": str(encoder)},
        "method": {"name": "rotation"}, "engine": {"max_steps": 1, "batch_size": 2}})
    run = RunDir.create(tmp_path / "runs", "two-step")
    with pytest.raises(ConfigError, match="color_standardize"):
        run_pretrain(config, run)
    assert not (run.path / "manifest.csv").exists()                          # nothing prepared or trained


def test_commands_refuse_before_a_run_directory_exists(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retinassl.cli import app

    encoder = _saved(tmp_path / "enc", PreprocessConfig(size=64, clahe=True))   # no preset equalises
    runs = tmp_path / "runs"
    for command in (["train", "demo"], ["pretrain", "rotation"], ["semisup", "train", "demo-ssl-gan"]):
        key = "learner.model.init" if command[0] == "semisup" else "model.init"
        result = CliRunner().invoke(app, [*command, f"{key}={encoder}", "--runs-dir", str(runs)])
        assert isinstance(result.exception, ConfigError), (command, result.output)
        assert "preprocess.clahe is False, the encoder's True" in str(result.exception)
        assert not runs.exists(), command                                     # nothing left behind


def test_cross_modal_infrared_inputs_are_compared_as_the_job_prepares_them(tmp_path: Path) -> None:
    from retinassl.models.initialize import check_encoder_inputs
    from retinassl.jobs.cross_modal import CrossModalRunConfig

    config = CrossModalRunConfig.model_validate({"input": "ir_image", "preprocess": {"size": 64}})
    encoder = _saved(tmp_path / "ir", config.input_preprocess())              # an earlier infrared encoder
    check_encoder_inputs(config.model_copy(update={"model": config.model.model_copy(update={"init": str(encoder)})}))
    colour = config.model_copy(update={"input": "image",
                                       "model": config.model.model_copy(update={"init": str(encoder)})})
    with pytest.raises(ConfigError, match="preprocess.channels is 3, the encoder's 1"):
        check_encoder_inputs(colour)


def test_segmentation_takes_any_encoder_its_inputs_are_its_own(tmp_path: Path) -> None:
    from retinassl.models.initialize import check_encoder_inputs
    from retinassl.jobs.segment_config import SegmentConfig

    encoder = _saved(tmp_path / "enc", PreprocessConfig(size=512))            # crop_fov, normalize max
    config = SegmentConfig()
    check_encoder_inputs(config.model_copy(update={"model": config.model.model_copy(update={"init": str(encoder)})}))


def test_a_resume_with_a_refused_override_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retinassl.cli import app
    from retinassl.config import load_config, to_yaml
    from retinassl.io.rundir import RunDir
    from retinassl.jobs.train import TrainConfig

    encoder = _saved(tmp_path / "enc", PreprocessConfig(size=64, normalize="image"))
    run = RunDir.create(tmp_path / "runs", "stopped")
    config = load_config(TrainConfig, "demo", [f"model.init={encoder}"])     # demo: normalize image, as the encoder
    run.write_config(to_yaml(config))
    before = (run.config_file.read_text(), (run.path / "run.json").read_text())
    result = CliRunner().invoke(app, ["train", "--resume", str(run.path), "preprocess.normalize=max"])
    assert isinstance(result.exception, ConfigError) and "preprocess.normalize is 'max'" in str(result.exception)
    assert (run.config_file.read_text(), (run.path / "run.json").read_text()) == before


def test_every_job_config_that_prepares_images_for_an_encoder_states_its_encoder_inputs() -> None:
    """A config that prepares fundus images with a ``PreprocessConfig`` and takes an encoder (``model``,
    ``learner``, ``learners``, ``inits``) implements ``encoder_inputs``, so that its saved encoders are
    checked; configs whose inputs are their own (segmentation's vessel inputs, OCT B-scans) do not."""
    import importlib
    import pkgutil

    import retinassl.jobs
    import retinassl.sweeps
    from retinassl.config import Section
    from retinassl.models.initialize import StartsFromEncoders

    for package in (retinassl.jobs, retinassl.sweeps):
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")

    def subclasses(cls: type) -> set[type]:
        return {s for c in cls.__subclasses__() for s in {c} | subclasses(c)}

    takes_encoders = {c for c in subclasses(Section) if c.model_fields.get("preprocess") is not None
                      and c.model_fields["preprocess"].annotation is PreprocessConfig
                      and {"model", "learner", "learners", "inits"} & set(c.model_fields)}
    names = {c.__name__ for c in takes_encoders}
    assert {"PretrainConfig", "TrainConfig", "CrossModalRunConfig", "SemisupTrainConfig",
            "SSLGANExperimentConfig", "TransferConfig"} <= names                      # the rule sees them
    assert "SegmentConfig" not in names
    missing = sorted(c.__name__ for c in takes_encoders if not issubclass(c, StartsFromEncoders))
    assert not missing, f"these configs take an encoder but do not state its inputs: {missing}"


def test_the_ssl_gan_experiment_checks_the_learners_it_trains_only(tmp_path: Path) -> None:
    from retinassl.jobs.patch_config import LearnerConfig, SSLGANExperimentConfig
    from retinassl.models.initialize import check_encoder_inputs

    clahe = _saved(tmp_path / "clahe", PreprocessConfig(size=64, clahe=True))
    learner = LearnerConfig()
    with_clahe = learner.model_copy(update={"model": learner.model.model_copy(update={"init": str(clahe)})})
    config = SSLGANExperimentConfig(preprocess=PreprocessConfig(size=64), learners={
        "ssl-gan": learner, "convnet": learner, "resnet34": with_clahe}, baselines=["convnet"])
    check_encoder_inputs(config)                                    # resnet34 is defined, not trained
    with pytest.raises(ConfigError, match=r"learners\.resnet34\.model\.init: .*preprocess\.clahe"):
        check_encoder_inputs(config.model_copy(update={"baselines": ["convnet", "resnet34"]}))


def test_a_published_models_inputs_are_the_ones_compared(tmp_path: Path) -> None:
    """``model.weights`` sets the input normalisation before the check (the job prepares its inputs so)."""
    from retinassl.jobs.train import TrainConfig
    from retinassl.models.initialize import check_encoder_inputs

    encoder = _saved(tmp_path / "tuned", PreprocessConfig(size=224, normalize="imagenet"))  # a RETFound, saved here
    model = {"arch": "vit_large", "weights": "retfound-mae", "init": str(encoder)}
    check_encoder_inputs(TrainConfig.model_validate({"preprocess": {"size": 256, "normalize": "max"}, "model": model}))
    with pytest.raises(ConfigError, match="preprocess.normalize is 'max', the encoder's 'meanstd'"):
        check_encoder_inputs(TrainConfig.model_validate({"preprocess": {"size": 256, "normalize": "max"},
                                                         "model": {**model, "weights": None}}))
