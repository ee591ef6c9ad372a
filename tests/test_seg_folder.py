"""funcml.seg.folder: reading image/mask folders, and clear errors for bad ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from funcml import random
from funcml.errors import DataError
from funcml.seg.folder import FolderDataset, read_image, save_mask_png, write_example_folder
from funcml.seg.shapes import ShapesConfig, shapes_batch

CFG = ShapesConfig(height=24, width=20)


def _write(root, stem, image: np.ndarray, mask: np.ndarray | None, *, image_ext=".png", mask_mode="L"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    if mask is not None:
        if mask_mode == "P":
            save_mask_png(torch.from_numpy(mask.astype(np.int64)), root / "masks" / f"{stem}.png")
        else:
            Image.fromarray(mask.astype(np.uint8)).convert(mask_mode).save(root / "masks" / f"{stem}.png")


def _rgb(h=4, w=5, value=128):
    return np.full((h, w, 3), value, dtype=np.uint8)


# --- round trip ------------------------------------------------------------------------------------

def test_write_then_read_gives_back_the_shapes_batch(tmp_path, key):
    root = write_example_folder(tmp_path / "ds", key, 3, CFG)
    ds = FolderDataset(root, num_classes=CFG.num_classes)
    images, masks = shapes_batch(random.fold_in(key, "example_folder"), 3, CFG)
    assert len(ds) == 3 and ds.stems == ["0000", "0001", "0002"]
    for i in range(3):
        image, mask = ds[i]
        assert image.shape == (3, 24, 20) and image.dtype == torch.float32
        assert mask.dtype == torch.int64 and torch.equal(mask, masks[i])
        assert float((image - images[i]).abs().max()) <= 0.5 / 255 + 1e-6  # 8-bit quantisation only


def test_example_masks_are_palette_pngs(tmp_path, key):
    root = write_example_folder(tmp_path / "ds", key, 1, CFG)
    with Image.open(root / "masks" / "0000.png") as im:
        assert im.mode == "P"


def test_grey_images_and_resizing(tmp_path, key):
    cfg = dataclasses.replace(CFG, channels=1)
    root = write_example_folder(tmp_path / "ds", key, 2, cfg)
    ds = FolderDataset(root, num_classes=cfg.num_classes, channels=1, image_size=(12, 10))
    image, mask = ds[1]
    assert image.shape == (1, 12, 10) and mask.shape == (12, 10)
    _, full = FolderDataset(root, num_classes=cfg.num_classes, channels=1)[1]
    assert set(mask.unique().tolist()) <= set(full.unique().tolist())


def test_grey_mask_values_are_class_ids_and_jpeg_images_are_read(tmp_path):
    mask = np.array([[0, 1, 2, 255, 1]] * 4)
    _write(tmp_path, "a", _rgb(), mask, image_ext=".jpg")
    image, got = FolderDataset(tmp_path, num_classes=3)[0]
    assert torch.equal(got, torch.from_numpy(mask))  # 255 = ignore_index passes through
    assert image.shape == (3, 4, 5)


def test_class_map_translates_raw_values(tmp_path):
    _write(tmp_path, "a", _rgb(), np.array([[0, 128, 255, 0, 0]] * 4))
    _, got = FolderDataset(tmp_path, num_classes=2, class_map={0: 0, 128: 1}, ignore_index=255)[0]
    assert got[0].tolist() == [0, 1, 255, 0, 0]
    with pytest.raises(DataError, match=r"a\.png: raw mask value\(s\) \[128\] are not in class_map"):
        FolderDataset(tmp_path, num_classes=2, class_map={0: 0})[0]


# --- errors name the file ------------------------------------------------------------------------------


# --- bit depths ------------------------------------------------------------------------------------

def test_16bit_grey_images_are_scaled_by_65535_not_clipped(tmp_path):
    """Pillow's 8-bit conversion clips a 16-bit image (nearly all white): read_image scales it instead."""
    values = (np.arange(20 * 16, dtype=np.uint16) * 200).reshape(20, 16)  # up to 63800
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    grey = read_image(path, 1)
    assert grey.shape == (1, 20, 16) and grey.dtype == torch.float32
    torch.testing.assert_close(grey[0], torch.from_numpy(values.astype(np.float32) / 65535.0))
    rgb = read_image(path, 3)
    assert rgb.shape == (3, 20, 16) and torch.equal(rgb[0], rgb[2]) and torch.equal(rgb[1], grey[0])


def test_8bit_images_are_divided_by_255(tmp_path):
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    Image.fromarray(pixels).save(tmp_path / "a.png")
    torch.testing.assert_close(read_image(tmp_path / "a.png", 3),
                               torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1))
    Image.fromarray(pixels[..., 0]).save(tmp_path / "g.png")
    torch.testing.assert_close(read_image(tmp_path / "g.png", 1)[0], torch.from_numpy(pixels[..., 0] / 255.0).float())


def test_float_images_in_unit_range_are_kept_and_others_refused(tmp_path):
    ok = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(ok, mode="F").save(tmp_path / "ok.tiff")
    torch.testing.assert_close(read_image(tmp_path / "ok.tiff", 1)[0], torch.from_numpy(ok))
    Image.fromarray(ok * 300.0, mode="F").save(tmp_path / "bad.tiff")
    with pytest.raises(DataError, match=r"bad.tiff.*\[0, 1\].*\[0, 300\]"):
        read_image(tmp_path / "bad.tiff", 1)


def test_folder_dataset_reads_16bit_images_at_their_depth(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    values = np.full((6, 8), 30000, dtype=np.uint16)
    Image.fromarray(values).save(root / "images" / "a.png")
    _write(root, "b", np.full((6, 8), 128, dtype=np.uint8), None)
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((6, 8), dtype=np.uint8)).save(root / "masks" / f"{stem}.png")
    ds = FolderDataset(root, num_classes=2, channels=1)
    image, _ = ds[0]
    assert abs(float(image.mean()) - 30000 / 65535) < 1e-6  # not 1.0 (clipped) and not 30000/255


def test_missing_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nowhere does not exist"):
        FolderDataset(tmp_path / "nowhere", num_classes=2)


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_missing_subfolder_is_a_data_error(tmp_path, missing):
    _write(tmp_path, "a", _rgb(), np.zeros((4, 5)))
    for f in (tmp_path / missing).iterdir():
        f.unlink()
    (tmp_path / missing).rmdir()
    with pytest.raises(DataError, match=f"missing folder {missing}/"):
        FolderDataset(tmp_path, num_classes=2)


def test_image_without_mask_names_the_image(tmp_path):
    _write(tmp_path, "a", _rgb(), np.zeros((4, 5)))
    _write(tmp_path, "lonely", _rgb(), None)
    with pytest.raises(DataError, match=r"lonely\.png has no mask .*masks/lonely\.png"):
        FolderDataset(tmp_path, num_classes=2)


def test_class_id_out_of_range_names_file_value_and_range(tmp_path):
    _write(tmp_path, "bad", _rgb(), np.array([[0, 1, 4, 0, 0]] * 4), mask_mode="P")
    ds = FolderDataset(tmp_path, num_classes=3)
    with pytest.raises(DataError, match=r"bad\.png: class id 4 at \(row 0, col 2\) is outside \[0, 3\)"):
        ds[0]
    with pytest.raises(DataError, match=r"bad\.png"):
        ds.validate()


@pytest.mark.parametrize("which", ["images", "masks"])
def test_corrupt_file_is_a_data_error_naming_it(tmp_path, which):
    _write(tmp_path, "a", _rgb(), np.zeros((4, 5)))
    (tmp_path / which / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=rf"{which}/a\.png: cannot read the image"):
        FolderDataset(tmp_path, num_classes=2)[0]


def test_size_mismatch_names_both_files(tmp_path):
    _write(tmp_path, "a", _rgb(4, 5), np.zeros((4, 6)))
    with pytest.raises(DataError, match=r"images/a\.png is 5x4 but its mask .*masks/a\.png is 6x4"):
        FolderDataset(tmp_path, num_classes=2)[0]


def test_colour_mask_is_a_data_error(tmp_path):
    _write(tmp_path, "a", _rgb(), np.zeros((4, 5)), mask_mode="RGB")
    with pytest.raises(DataError, match=r"a\.png: a mask must be a palette \(P\) or greyscale PNG"):
        FolderDataset(tmp_path, num_classes=2)[0]


def test_example_folder_refuses_to_overwrite(tmp_path, key):
    write_example_folder(tmp_path / "ds", key, 1, CFG)
    with pytest.raises(DataError, match="not empty"):
        write_example_folder(tmp_path / "ds", key, 1, CFG)
    assert len(list((tmp_path / "ds" / "images").iterdir())) == 1
