"""What ``retinassl demo``'s SSL-GAN and transfer stages promise the user, read from their presets
(no training): the SSL-GAN beside a supervised learner of the same network at 10 labelled images, and a
pretrained encoder against scratch of the same architecture at a low label fraction with DeLong tests."""

from __future__ import annotations

from pathlib import Path

from retinassl.config import read_yaml
from retinassl.demo.stages import PRETRAINED
from retinassl.sweeps.ssl_gan import resolve_config as resolve_ssl_gan
from retinassl.sweeps.transfer_config import resolve_config as resolve_transfer


def test_ssl_gan_stage_compares_with_the_supervised_network_at_10_labels() -> None:
    for budget in ("demo", "quick"):
        config = resolve_ssl_gan(read_yaml("demo-ssl-gan-sweep"), budget)
        assert config.labelled == [10] and config.reference == "ssl-gan" and config.baselines == ["supervised"]
        gan, supervised = config.learners["ssl-gan"], config.learners["supervised"]
        assert gan.method_name == "ssl-gan" and supervised.method_name == "supervised"
        assert gan.model == supervised.model and gan.patch_size == supervised.patch_size
        assert config.data.options["seed"] == 0 and not config.extension.enabled


def test_transfer_stage_tests_the_pretrained_encoder_against_scratch_at_a_low_fraction(tmp_path: Path) -> None:
    data = read_yaml("transfer-demo")
    demo = data["budgets"]["demo"]
    demo["inits"] = [*demo["inits"], {"name": PRETRAINED, "init": str(tmp_path / "encoder")}]
    config = resolve_transfer(data, "demo")
    assert [i.name for i in config.inits] == ["scratch", PRETRAINED] and config.reference == "scratch"
    assert min(config.fractions) <= 0.05 and len(config.seeds) >= 3 and "probe" in config.protocols
    # the same architecture, input size and normalisation as the demo's patch classifier (stage 1)
    stage1 = read_yaml("demo")
    assert config.model.arch == stage1["model"]["arch"] and config.model.kwargs == stage1["model"]["kwargs"]
    assert config.preprocess.size == stage1["preprocess"]["size"]
    assert config.preprocess.normalize == stage1["preprocess"]["normalize"]
    # reported on other eyes than stage 1 trained on, and other than the seeds the settings were chosen on
    assert config.data.options["seed"] not in (stage1["data"]["options"]["seed"], 7, 9)
