"""Hostile input of issue 21 (data and config layers): decompression bombs and YAML alias bombs under
a 500 MB address-space limit, corrupted cache entries, the digest memo's stored paths, mislabelled
images, bad source options and oversized requests.

The bomb cases also run through the generic corpus (``corpus.py``: ``gzip-bomb-ppm``,
``png-100-megapixel``... and the ``alias-bomb`` config of ``test_bad_input.py``); here they run in a
child Python whose address space is limited with ``resource.setrlimit(RLIMIT_AS)``: reading them
must give the toolkit's own error, not a ``MemoryError`` (the child first checks that the limit
really refuses a 600 MB allocation).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from reliability.corpus import (CASES, alias_bomb_yaml, fundus, gzip_ppm_bomb, jpeg_bytes, png_bomb,
                                png_bytes, write_case)
from reliability.harness import cli_in_process as cli
from retinassl.errors import ConfigError, DataError

LIMIT_MB = 500


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RETINASSL_PROGRESS", "0")
    monkeypatch.delenv("RETINASSL_ALLOW_LARGE", raising=False)
    monkeypatch.chdir(tmp_path)


def run_limited(code: str, tmp: Path) -> dict:
    """Run ``code`` in a child Python limited to LIMIT_MB of address space; it must print one JSON
    line. The child checks first that the limit refuses a 600 MB allocation."""
    prologue = textwrap.dedent(f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_MB} << 20, {LIMIT_MB} << 20))
        try:
            bytearray(600 << 20)
            raise SystemExit("the address-space limit is not effective")
        except MemoryError:
            pass
    """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "RETINASSL_CACHE": str(tmp / "cache"), "RETINASSL_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- decompression bombs (item 1) -----------------------------------------------------------------
@pytest.mark.parametrize("case", ["gzip-bomb-ppm", "gzip-overlong-ppm", "png-100-megapixel",
                                  "png-400-megapixel"])
def test_bomb_is_refused_within_500_mb(tmp_path: Path, case: str) -> None:
    """The crafted bomb goes through the whole preparation (manifest -> cache) in a child limited to
    500 MB: a DataError naming the file, row and problem, never a MemoryError; the good row's
    entry is written and kept."""
    manifest = write_case(tmp_path / "data", CASES[case])
    result = run_limited(f"""
        from retinassl.data.cache import Cache
        from retinassl.data.manifest import Manifest
        from retinassl.data.preprocess import PreprocessConfig
        from retinassl.errors import DataError
        try:
            Cache({str(tmp_path / 'cache')!r}).prepare(Manifest.load({str(manifest)!r}), PreprocessConfig(size=32))
            out = {{"error": None}}
        except DataError as exc:
            out = {{"error": str(exc)}}
        except MemoryError:
            out = {{"error": "MemoryError"}}
        print(json.dumps(out))
    """, tmp_path)
    assert result["error"] and result["error"] != "MemoryError", result
    assert CASES[case].bad_file in result["error"] and "row 1" in result["error"], result
    for needle in CASES[case].needles:
        assert needle in result["error"], (needle, result)
    assert len(list((tmp_path / "cache").rglob("entry.json"))) == 1  # the good row, kept


def test_gzip_bomb_is_tiny_on_disk_and_huge_inside() -> None:
    """The reference facts of the crafted gzip bomb (so that the test above means something):
    about 3 MB compressed, a header announcing 20000 x 50000 RGB pixels (3 GB)."""
    import gzip
    import io

    data = gzip_ppm_bomb()
    assert len(data) < 4 << 20
    with gzip.open(io.BytesIO(data)) as fh:
        assert fh.read(20).startswith(b"P6 20000 50000 255\n")


def test_png_bomb_is_a_valid_png(tmp_path: Path) -> None:
    """The crafted PNG is valid (a small one decodes to the black image it declares), so the big one
    is refused for its size, not for being broken."""
    from PIL import Image

    path = tmp_path / "small.png"
    path.write_bytes(png_bomb(300, 200))
    with Image.open(path) as im:
        assert im.size == (300, 200) and np.asarray(im).max() == 0
    assert len(png_bomb(10000, 10000)) < 1 << 20  # 300 MB of pixels in under 1 MB


def test_bomb_through_data_prepare_exit_2_and_nothing_written(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    manifest = write_case(tmp_path / "data", CASES["gzip-bomb-ppm"])
    config = tmp_path / "prepare.yaml"
    config.write_text(f"data: {{source: manifest, manifest: {manifest}, cache_dir: {tmp_path / 'cache'}}}\n"
                      f"preprocess: {{size: 32}}\n")
    code, out, err = cli(["data", "prepare", str(config), "--out", str(tmp_path / "out.csv")], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "bad.ppm.gz" in err and "decompression bomb" in err
    assert not (tmp_path / "out.csv").exists()


# -- YAML alias bombs (item 6) ----------------------------------------------------------------------
def test_alias_bomb_fails_fast_within_500_mb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb_yaml())
    assert len(path.read_bytes()) < 1024
    result = run_limited(f"""
        from retinassl.config import EngineConfig, Section, load_config
        from retinassl.errors import ConfigError

        class Config(Section):
            engine: EngineConfig = EngineConfig()
        try:
            load_config(Config, {str(path)!r}, ["engine.max_epochs=1"])
            out = {{"error": None}}
        except ConfigError as exc:
            out = {{"error": str(exc)}}
        except MemoryError:
            out = {{"error": "MemoryError"}}
        print(json.dumps(out))
    """, tmp_path)
    assert result["error"] and str(path) in result["error"] and "alias bomb" in result["error"], result


def test_alias_bomb_in_an_override_is_refused() -> None:
    from retinassl.config import apply_overrides

    small = "[&a [1, 2, 3], *a, *a]"  # aliases within the bound are fine
    assert apply_overrides({}, [f"x={small}"])["x"] == [[1, 2, 3]] * 3
    nest = "&l0 [" + ", ".join(["x"] * 9) + "]"
    for level in range(1, 8):
        nest = f"&l{level} [{nest}, " + ", ".join([f"*l{level - 1}"] * 8) + "]"
    with pytest.raises(ConfigError, match="alias bomb"):
        apply_overrides({}, [f"x={nest}"])


# -- corrupted cache entries (item 7) --------------------------------------------------------------
def _prepared(tmp_path: Path):
    from retinassl.data.cache import Cache
    from retinassl.data.manifest import Manifest
    from retinassl.data.preprocess import PreprocessConfig

    manifest = Manifest.load(write_case(tmp_path / "data", CASES["missing-file"]), check_files=False)
    manifest = manifest.subset(np.asarray([0]))  # the good row (image + MA mask)
    cache = Cache(tmp_path / "cache")
    return cache, manifest, cache.prepare(manifest, PreprocessConfig(size=32))


@pytest.mark.parametrize("victim", ["image.npy", "fov.npy", "mask"])
def test_truncated_entry_is_named_on_read_and_rebuilt_by_prepare(tmp_path: Path, victim: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from retinassl.data.preprocess import PreprocessConfig

    cache, manifest, prepared = _prepared(tmp_path)
    entry = prepared.entries[0]
    name = entry.masks["mask_MA"] if victim == "mask" else victim
    target = entry.directory / name
    original = {p.name: p.read_bytes() for p in entry.directory.iterdir()}
    target.write_bytes(original[name][: len(original[name]) // 2])
    read = {"image.npy": entry.image, "fov.npy": entry.fov, "mask": lambda: entry.mask("mask_MA")}[victim]
    with pytest.raises(DataError) as info:
        read()
    message = str(info.value)
    assert name in message and "corrupt" in message and "good.png" in message, message
    again = cache.prepare(manifest, PreprocessConfig(size=32))
    assert "corrupt" in caplog.text and "rebuilding" in caplog.text
    assert {p.name: p.read_bytes() for p in entry.directory.iterdir()} == original  # rebuilt exactly
    assert np.array_equal(again.entries[0].image(), np.load(entry.directory / "image.npy"))


def test_old_entry_without_records_is_checked_against_its_header(tmp_path: Path) -> None:
    """Entries written before ``entry.json`` recorded array sizes are checked against the .npy
    header's own shape."""
    from retinassl.data.preprocess import PreprocessConfig

    cache, manifest, prepared = _prepared(tmp_path)
    entry = prepared.entries[0]
    meta = json.loads((entry.directory / "entry.json").read_text())
    assert meta["arrays"]["image.npy"]["shape"] == [32, 32, 3]
    del meta["arrays"]
    (entry.directory / "entry.json").write_text(json.dumps(meta))
    assert entry.image().shape == (32, 32, 3)  # intact: reads
    data = (entry.directory / "image.npy").read_bytes()
    (entry.directory / "image.npy").write_bytes(data[:-10])
    with pytest.raises(DataError, match="image.npy has .* bytes"):
        entry.image()
    cache.prepare(manifest, PreprocessConfig(size=32))
    assert (entry.directory / "image.npy").read_bytes() == data


def test_truncated_entry_through_data_prepare_is_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_case(tmp_path / "data", CASES["missing-file"])
    import pandas as pd

    frame = pd.read_csv(manifest).iloc[:1]
    frame.to_csv(manifest, index=False)
    config = tmp_path / "prepare.yaml"
    config.write_text(f"data: {{source: manifest, manifest: {manifest}, cache_dir: {tmp_path / 'cache'}}}\n"
                      f"preprocess: {{size: 32}}\n")
    args = ["data", "prepare", str(config), "--out", str(tmp_path / "out.csv")]
    assert cli(args, capsys)[0] == 0
    (image,) = (tmp_path / "cache").rglob("image.npy")
    good = image.read_bytes()
    image.write_bytes(good[:100])
    code, out, err = cli(args, capsys)
    assert code == 0, err
    assert image.read_bytes() == good


# -- the digest memo stores no path (item 2, cache part) -------------------------------------------
def test_digest_memo_holds_no_path(tmp_path: Path) -> None:
    from retinassl.data.file_digests import DigestMemo, file_digest

    folder = tmp_path / "DOE_JANE_PHI123456"
    folder.mkdir()
    image = folder / "DOE_JANE_PHI123456_left.png"
    image.write_bytes(png_bytes(fundus(0)))
    database = tmp_path / "cache" / "digests.sqlite"
    database.parent.mkdir()
    with sqlite3.connect(database) as con:  # a memo made by an older version: absolute paths
        con.execute("CREATE TABLE digests (path TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, digest TEXT)")
        con.execute("INSERT INTO digests VALUES (?, 1, 1, 'x')", (str(image.resolve()),))
    assert b"PHI123456" in database.read_bytes()
    memo = DigestMemo(database)
    assert memo.digests([image]) == [file_digest(image)]
    assert memo.digests([image]) == [file_digest(image)]  # served from the memo
    con = sqlite3.connect(database)
    assert con.execute("SELECT count(*) FROM file_digests").fetchone()[0] == 1
    con.close()
    for stored in database.parent.iterdir():
        raw = stored.read_bytes()
        assert b"PHI123456" not in raw and b"DOE_JANE" not in raw and str(tmp_path).encode() not in raw


def test_digest_memo_notices_a_changed_file(tmp_path: Path) -> None:
    from retinassl.data.file_digests import DigestMemo, file_digest

    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(fundus(0)))
    memo = DigestMemo(tmp_path / "digests.sqlite")
    first = memo.digests([image])
    image.write_bytes(png_bytes(fundus(1)) + b"\0")
    assert memo.digests([image]) == [file_digest(image)] != first


# -- a JPEG named .png reads the same whatever the cache holds (item 9) ---------------------------------
def test_mislabelled_image_reads_the_same_whatever_the_cache_holds(tmp_path: Path) -> None:
    from retinassl.data.cache import Cache
    from retinassl.data.imageio import read_image
    from retinassl.data.manifest import Manifest
    from retinassl.data.preprocess import PreprocessConfig

    content = jpeg_bytes(fundus(5))
    root = tmp_path / "data"
    root.mkdir()
    (root / "real.jpg").write_bytes(content)
    (root / "fake.png").write_bytes(content)
    assert np.array_equal(read_image(root / "fake.png").array, read_image(root / "real.jpg").array)
    row = {"patient": "p", "eye": "L", "split": "train"}
    fake = Manifest.from_records([{"id": "fake", "image": "fake.png", **row}], root)
    real = Manifest.from_records([{"id": "real", "image": "real.jpg", **row}], root)
    config = PreprocessConfig(size=32)
    cold = Cache(tmp_path / "cold").prepare(fake, config)              # nothing cached yet
    warm_cache = Cache(tmp_path / "warm")
    warm_cache.prepare(real, config)                                    # the .jpg first
    warm = warm_cache.prepare(fake, config)                             # then the same bytes as .png
    assert np.array_equal(cold.entries[0].image(), warm.entries[0].image())


# -- bad source options (item 8) ---------------------------------------------------------------------
def _glob_root(tmp_path: Path) -> Path:
    root = tmp_path / "globbed"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(png_bytes(fundus(0)))
    (root / "images" / "notes.png").write_text("not an image: a text file with an image's name\n")
    return root


SOURCE_CASES = {
    "glob-absolute-pattern": ("glob", lambda t: {"root": str(_glob_root(t)), "image": "/etc/*"},
                              ("option image='/etc/*'", "relative")),
    "glob-escaping-pattern": ("glob", lambda t: {"root": str(_glob_root(t)), "image": "../*"},
                              ("option image='../*'",)),
    "glob-bad-regex": ("glob", lambda t: {"root": str(_glob_root(t)), "image": "images/*.png",
                                          "stem_regex": "(["}, ("stem_regex='(['", "regular expression")),
    "csv-number": ("csv", lambda t: {"csv": 42}, ("data.options.csv", "got 42")),
    "glob-masks-not-a-mapping": ("glob", lambda t: {"root": str(_glob_root(t)), "image": "images/*.png",
                                                    "masks": 7}, ("data.options.masks",)),
    "synthetic-n-images-text": ("synthetic", lambda t: {"n_images": "many"}, ("data.options.n_images",)),
    "synthetic-zero-images": ("synthetic", lambda t: {"n_images": 0, "out_dir": str(t / "syn")},
                              ("data.options.n_images", "at least 1")),
    "synthetic-billion-images": ("synthetic", lambda t: {"n_images": 1_000_000_000, "out_dir": str(t / "syn")},
                                 ("data.options.n_images", "memory", "RETINASSL_ALLOW_LARGE")),
    "synthetic-huge-size": ("synthetic", lambda t: {"size": 100_000, "out_dir": str(t / "syn")},
                            ("data.options.size", "memory")),
}


@pytest.mark.parametrize("name", sorted(SOURCE_CASES))
def test_bad_source_option_is_a_config_error_naming_it(tmp_path: Path, name: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    from retinassl.data.sources import load_source

    source, make, needles = SOURCE_CASES[name]
    options = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_source(source, **options)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    config = tmp_path / "prepare.yaml"
    config.write_text(json.dumps({"data": {"source": source, "options": options},
                                  "preprocess": {"size": 32}}))
    code, out, err = cli(["data", "prepare", str(config), "--out", str(tmp_path / "out.csv")], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "syn").exists() or not any((tmp_path / "syn").iterdir())  # nothing generated


def test_glob_over_a_non_image_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A glob matching a file that only has an image's name: the data error names that file and
    ``--skip-bad`` keeps the real image."""
    root = _glob_root(tmp_path)
    config = tmp_path / "prepare.yaml"
    config.write_text(json.dumps({"data": {"source": "glob", "options": {"root": str(root),
                                                                          "image": "images/*.png"}},
                                  "preprocess": {"size": 32}}))
    args = ["data", "prepare", str(config), "--out", str(tmp_path / "out.csv")]
    code, out, err = cli(args, capsys)
    assert code == 2 and "Traceback" not in err and "notes.png" in err and "not a readable image" in err, err
    code, out, err = cli(args + ["--skip-bad"], capsys)
    assert code == 0 and "1 skipped" in out, out + err


# -- memory and disk budgets (item 5) ------------------------------------------------------------------
def test_preprocess_budget_refuses_then_override_lets_it_run(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With (pretended) 1 MB of memory, preparing at preprocess.size=8192 is refused before any
    decoding, naming preprocess.size; RETINASSL_ALLOW_LARGE=1 turns the refusal into a warning."""
    from retinassl.data import limits
    from retinassl.data.cache import Cache
    from retinassl.data.manifest import Manifest
    from retinassl.data.preprocess import PreprocessConfig

    manifest = Manifest.load(write_case(tmp_path / "data", CASES["missing-file"]), check_files=False)
    manifest = manifest.subset(np.asarray([0]))
    monkeypatch.setattr(limits, "available_memory", lambda: 1 << 20)
    with pytest.raises(ConfigError, match=r"preprocess.size.*RETINASSL_ALLOW_LARGE=1") as info:
        Cache(tmp_path / "cache").prepare(manifest, PreprocessConfig(size=8192))
    assert "memory" in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.npy"))
    monkeypatch.setattr(limits, "free_disk", lambda path: 0)
    monkeypatch.setattr(limits, "available_memory", lambda: 1 << 40)
    with pytest.raises(ConfigError, match="of disk under"):
        Cache(tmp_path / "cache").prepare(manifest, PreprocessConfig(size=32))
    monkeypatch.setenv("RETINASSL_ALLOW_LARGE", "1")
    prepared = Cache(tmp_path / "cache").prepare(manifest, PreprocessConfig(size=32))
    assert prepared.entries[0].image().shape == (32, 32, 3)


def test_estimates_are_lower_bounds_of_the_arrays_held() -> None:
    """Reference values by hand: one 512 px RGB entry is 512*512*(3 + 1) bytes on disk (image +
    FOV); a batch of 32 float32 RGB 8192 px inputs is 25.8 GB, twice that for the normalised copy."""
    from retinassl.data.limits import batch_cost, preprocess_cost

    memory, disk = preprocess_cost(1, 512, 3)
    assert disk == 512 * 512 * 4 and memory >= 512 * 512 * 3 * 4
    assert batch_cost(32, 8192, 3) == 2 * 32 * 3 * 8192 * 8192 * 4


@pytest.mark.parametrize("size, ok", [((1, 1), False), ((4000, 2), False), ((400, 40), False),
                                      ((16, 16), True), ((4288, 2848), True), ((3900, 3072), True)])
def test_image_shape_limits(size: tuple[int, int], ok: bool) -> None:
    from retinassl.data.limits import check_image_shape

    if ok:
        check_image_shape(size, "x.png")
    else:
        with pytest.raises(DataError, match=f"x.png: image is {size[0]}x{size[1]}"):
            check_image_shape(size, "x.png")


def test_option_types_follow_the_loader_hints() -> None:
    """A wrong kind of value is refused naming the option; a lone name where a list of names is
    expected is left to the loader, as before (``parts=B``)."""
    from retinassl.data.sources import check_option_types, load_idrid

    check_option_types("idrid", load_idrid, {"parts": "B", "root": "/nowhere"})
    check_option_types("idrid", load_idrid, {"parts": ["A", "B"]})
    with pytest.raises(ConfigError, match=r"data.options.parts\) must be Sequence\[str\], got 5"):
        check_option_types("idrid", load_idrid, {"parts": 5})


def test_batch_memory_check_names_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """preprocess.size=8192 with batches of 64 (the demo preset's) needs 2 x 51.5 GB: refused on a
    machine with less, naming both options; small batches pass."""
    from retinassl.data import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 64 << 30)
    with pytest.raises(ConfigError, match=r"engine.batch_size or preprocess.size") as info:
        limits.check_batch_memory(64, 8192, 3)
    assert "96.0 GB of memory" in str(info.value)  # 2 * 64 * 3 * 8192**2 * 4 bytes = 96 GiB
    limits.check_batch_memory(64, 256, 3)


def _peak_rss_mb(args: list[str], tmp: Path) -> tuple[int, str, float]:
    """Run the installed ``retinassl ARGS`` and return (exit status, stderr, peak RSS in MB) of that
    process, measured by the kernel (``os.wait4``'s rusage)."""
    from reliability.harness import RETINASSL, cli_env

    with open(tmp / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([str(RETINASSL), *args], cwd=tmp, env=cli_env(tmp), stdout=subprocess.DEVNULL,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read(), usage.ru_maxrss / 1024


@pytest.mark.slow
def test_real_command_line_refuses_the_bomb_at_baseline_memory(tmp_path: Path) -> None:
    """``retinassl data prepare`` (the installed command, a subprocess) on the 3 GB gzip bomb: exit 2,
    one line naming the file, and a peak RSS within 100 MB of the same command on a good dataset
    (the command's own imports take a few hundred MB; before the fix this run reached 6.5 GB)."""
    runs = {}
    for name in ("1x1-image", "gzip-bomb-ppm"):  # a cheap bad image as the baseline, then the bomb
        folder = tmp_path / name
        manifest = write_case(folder / "data", CASES[name])
        config = folder / "prepare.yaml"
        config.write_text(f"data: {{source: manifest, manifest: {manifest}}}\npreprocess: {{size: 32}}\n")
        runs[name] = _peak_rss_mb(["data", "prepare", str(config), "--out", str(folder / "out.csv")], folder)
    code, err, peak = runs["gzip-bomb-ppm"]
    assert code == 2 and "Traceback" not in err, err
    assert "bad.ppm.gz" in err and "decompression bomb" in err, err
    baseline = runs["1x1-image"][2]
    assert runs["1x1-image"][0] == 2
    assert peak < baseline + 100, (peak, baseline)
