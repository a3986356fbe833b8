"""The ``folder`` data set: class folders, formats, the test split, bad files, the bundle record."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exitwise.datasets import (
    DatasetNotFoundError,
    EvalImages,
    InvalidDatasetError,
    default_preprocessing,
    open_dataset,
)
from exitwise.datasets.folder import Entry, FolderImages, in_test_share, scan_folder
from exitwise.errors import ExitwiseError
from exitwise.preprocess import Preprocessing, decode_image, to_uint8

from ..folder_helpers import BAD_FILES, CLASSES, truncate, write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder") / "data", per_class=20, bad_files=True)


def test_classes_formats_and_what_was_left_out(folder: Path) -> None:
    (folder / "train" / "loose.jpg").write_bytes(b"beside the class folders")
    scan = scan_folder(folder)
    assert scan.classes == CLASSES and scan.test_split == "train"
    assert len(scan.train) + len(scan.test) == 4 * 20
    assert sorted(path for path, _ in scan.skipped) == sorted(BAD_FILES)
    assert all("not an image" in why for _, why in scan.skipped)
    # hidden files (.DS_Store) are not counted
    assert scan.ignored == ["train/loose.jpg", "train/bag/notes.txt"]
    formats, modes = set(), set()
    train = FolderImages(scan, "train")
    for i in range(12):
        img = train.image(i)
        formats.add(img.format)
        modes.add(img.mode)
    assert formats == {"PNG", "JPEG", "WEBP", "BMP"} and modes == {"RGB", "L"}


def test_images_come_back_as_the_server_decodes_them(folder: Path) -> None:
    ds = open_dataset("folder", "train", folder)
    spec = Preprocessing(input_size=24, channels=3, resize=24, crop=24, mean=(0.5,) * 3,
                         std=(0.2,) * 3)  # fmt: skip
    view = EvalImages(ds, spec)
    for i in (0, 4, 7):  # a PNG, a grayscale PNG, a BMP
        served = to_uint8(decode_image(ds.files[i].read_bytes()), spec)
        assert np.array_equal(view[i][0].numpy(), served)
        assert view[i][1] == int(ds.labels[i])


def test_the_test_share_is_a_property_of_each_file(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=15)
    first = scan_folder(root, test_fraction=0.25, split_seed=3)
    again = scan_folder(root, test_fraction=0.25, split_seed=3)
    assert [e.relative for e in first.test] == [e.relative for e in again.test]
    assert all(in_test_share(3, e.relative, 0.25) for e in first.test)
    assert 0 < len(first.test) < len(first.train)
    other_seed = scan_folder(root, test_fraction=0.25, split_seed=4)
    assert {e.relative for e in other_seed.test} != {e.relative for e in first.test}
    # More images in the folder move none of the ones already there.
    write_folder(tmp_path / "more", per_class=25, seed=7)
    for path in (tmp_path / "more" / "train").rglob("*.*"):
        target = root / "train" / path.parent.name / f"new-{path.name}"
        shutil.copy(path, target)
    grown = scan_folder(root, test_fraction=0.25, split_seed=3)
    assert {e.relative for e in first.test} <= {e.relative for e in grown.test}
    assert {e.relative for e in first.train} <= {e.relative for e in grown.train}


def test_val_folder_is_the_test_split(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=8, val_per_class=3)
    test = open_dataset("folder", "test", root)
    assert len(test) == 12 and all(f.parts[-3] == "val" for f in test.files)
    assert len(open_dataset("folder", "train", root)) == 32  # all of train/


def _fails(root: Path, match: str) -> None:
    with pytest.raises(ExitwiseError, match=match) as info:
        scan_folder(root)
    assert "\n" not in str(info.value)


def test_bad_folders_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"set data\.root"):
        scan_folder(None)
    _fails(tmp_path / "nowhere", "does not exist")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "train" / "a.png")
    _fails(tmp_path / "flat", "no class folders")

    one = write_folder(tmp_path / "one", per_class=4, classes=["only"])
    _fails(one, "one class only")

    empty = write_folder(tmp_path / "empty", per_class=4)
    (empty / "train" / "zebra").mkdir()
    (empty / "train" / "zebra" / "broken.png").write_bytes(b"")  # unreadable: still empty
    _fails(empty, r"empty class folder train/zebra \(no readable images\)")

    mixed = write_folder(tmp_path / "mixed", per_class=4, val_per_class=2)
    shutil.rmtree(mixed / "val" / "coat")
    (mixed / "val" / "cot").mkdir()
    _fails(mixed, r"different class folders \(only in train/: coat; only in val/: cot\)")

    tiny = write_folder(tmp_path / "tiny", per_class=1)
    with pytest.raises(InvalidDatasetError, match="no test images"):
        scan_folder(tiny, test_fraction=0.01)


def test_damaged_pixel_data_is_refused_naming_the_file(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=6)
    ds = open_dataset("folder", "train", root)
    jpeg = next(i for i, f in enumerate(ds.files) if f.suffix == ".jpg")
    truncate(ds.files[jpeg])
    assert len(open_dataset("folder", "train", root)) == len(ds)  # the header still opens
    with pytest.raises(InvalidDatasetError, match=rf"{ds.files[jpeg].name}: .*remove or replace"):
        ds.image(jpeg)


def test_the_bundle_record_finds_the_same_images_again(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=10, bad_files=True)
    scan = scan_folder(root, test_fraction=0.3, split_seed=5)
    source = scan.source()
    assert source.root == str(root.resolve()) and len(source.skipped) == 3
    again = open_dataset("folder", "test", None, source=source)  # the recorded place and split
    assert [f.name for f in again.files] == [e.path.name for e in scan.test]
    moved = tmp_path / "moved"
    root.rename(moved)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        open_dataset("folder", "train", None, source=source)
    train = open_dataset("folder", "train", moved, source=source)  # --data-root
    assert len(train) == source.train_images
    next((moved / "train" / "coat").glob("*.png")).unlink()
    with pytest.raises(InvalidDatasetError, match="the train images differ from the bundle's"):
        open_dataset("folder", "train", moved, source=source)


def test_a_folder_has_no_fixed_preprocessing() -> None:
    with pytest.raises(ExitwiseError, match="comes from the recipe"):
        default_preprocessing("folder")


def _entries(*sizes: tuple[int, int]) -> list[Entry]:
    return [Entry(Path(f"{i}.png"), f"train/a/{i}.png", 0, size, 1) for i, size in enumerate(sizes)]


def test_the_automatic_size_is_the_median_shorter_side() -> None:
    from training.folder_data import auto_image_size

    assert auto_image_size(_entries((64, 64))) == (64, 64)
    assert auto_image_size(_entries((80, 64), (64, 100), (640, 480))) == (64, 64)
    # An even count takes the lower median: a size some image has.
    assert auto_image_size(_entries((40, 40), (48, 60), (56, 56), (96, 96))) == (48, 48)
    assert auto_image_size(_entries((100, 120))) == (96, 100)  # rounded down to a multiple of 8
    assert auto_image_size(_entries((28, 28))) == (32, 28)  # at least 32
    assert auto_image_size(_entries((4000, 3000))) == (224, 3000)  # at most 224
    with pytest.raises(InvalidDatasetError):
        auto_image_size([])


def test_the_recipe_measures_the_folder_unless_given_a_size(folder: Path) -> None:
    from training.config import DataSpec
    from training.folder_data import image_size, input_preprocessing, size_note
    from training.recipe_io import build_recipe

    scan = scan_folder(folder)  # shorter sides 36, 36, 44 (tests.folder_helpers.SIZES)
    auto = DataSpec(dataset="folder", root=str(folder), image_size="auto")
    assert DataSpec(dataset="folder", root=str(folder)).image_size is None  # left out: auto too
    assert image_size(auto) == image_size(auto, scan) == 32
    assert input_preprocessing(auto).input_size == 32 == input_preprocessing(auto).crop
    note = size_note(auto, scan, "msdnet-fmnist")
    assert note == (
        f"image size 32 (data.image_size auto: the median shorter side of the {len(scan.train)} "
        "training images is 36 pixels, rounded down to a multiple of 8); --set "
        "data.image_size=N to choose, and `exitwise inspect msdnet-fmnist --image-size N` shows "
        "what it costs"
    )
    fixed = DataSpec(dataset="folder", root=str(folder), image_size=48)
    assert image_size(fixed, scan) == 48 and size_note(fixed, scan) is None
    assert input_preprocessing(fixed).input_size == 48
    base = {"model": {"preset": "msdnet-fmnist"}, "epochs": 1, "batch_size": 2,
            "data": {"dataset": "folder", "root": "x"}}  # fmt: skip
    assert build_recipe(base, ["data.image_size=auto"]).data.image_size == "auto"
    for bad, why in (("8", "8 pixels is outside 16-512"), ("big", "must be auto or a whole")):
        with pytest.raises(ExitwiseError, match=why):
            build_recipe(base, [f"data.image_size={bad}"])
