import io

import numpy as np
import pytest
from PIL import Image

from app.core.intake.imaging import ImageError, load_rgb, sniff_format

SIZE = (32, 32)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"),
                                     ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif")])
def test_every_format_decodes_to_rgb_of_the_requested_size(tmp_path, fmt, ext):
    img = Image.new("RGB", (50, 40), (10, 200, 30))
    path = _save(img, tmp_path / f"a.{ext}", format=fmt)
    arr = load_rgb(path, SIZE)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert sniff_format(path.read_bytes()[:64]) == fmt
    # lossy formats drift a little; the colour must survive
    assert abs(int(arr[..., 1].mean()) - 200) < 20 and arr[..., 0].mean() < 40


def test_format_is_taken_from_content_not_name(tmp_path):
    path = _save(Image.new("RGB", (20, 20), (0, 0, 255)), tmp_path / "really_webp.jpeg",
                 format="WEBP")
    assert sniff_format(path.read_bytes()[:64]) == "WEBP"
    assert load_rgb(path, SIZE)[..., 2].mean() > 200


def test_text_file_named_jpg_is_reported(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    assert sniff_format(path.read_bytes()) is None
    with pytest.raises(ImageError, match="not a readable image"):
        load_rgb(path, SIZE)


def test_zero_byte_file_is_reported(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_rgb(path, SIZE)


def test_truncated_jpeg_is_reported(tmp_path):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(path, SIZE)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    arr = load_rgb(path, SIZE)
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 60  # red


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    data = np.full((30, 30), 32768, np.uint16)  # mid grey in 16 bits
    path = _save(Image.fromarray(data), tmp_path / "deep.png")
    arr = load_rgb(path, SIZE)
    assert 120 <= arr.mean() <= 135


def test_rgba_is_composited_on_white(tmp_path):
    path = _save(Image.new("RGBA", (30, 30), (0, 0, 0, 0)), tmp_path / "clear.png")
    assert load_rgb(path, SIZE).min() == 255


def test_palette_and_grayscale(tmp_path):
    p = _save(Image.new("RGB", (30, 30), (255, 0, 0)).convert("P"), tmp_path / "p.png")
    g = _save(Image.new("L", (30, 30), 77), tmp_path / "g.png")
    assert load_rgb(p, SIZE)[..., 0].mean() > 240
    assert np.all(load_rgb(g, SIZE) == 77)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 30), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 30, 30))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    arr = load_rgb(path, (30, 60))
    # after a 90 degree clockwise turn the white half is on top
    assert arr[:30].mean() > 200 and arr[30:].mean() < 50


def test_decompression_bomb_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (400, 400)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageError, match="too large"):
        load_rgb(path, SIZE)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = _save(Image.new("RGB", (2000, 1500), (0, 128, 0)), tmp_path / "big.jpg")
    with Image.open(path) as im:
        im.draft("RGB", SIZE)
        assert im.size[0] < 2000  # draft picks a smaller scale
    assert load_rgb(path, SIZE).shape == (32, 32, 3)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_rgb(path, SIZE)[..., 0].mean() > 200


def test_a_damaged_exif_block_decodes_without_a_warning_on_the_terminal(tmp_path):
    """A camera's broken EXIF block made Pillow print "Corrupt EXIF data" for every photo;
    the pixels decode, and the app's own decoders (the app, predict.py) say nothing."""
    import warnings

    from app.core.delivery.standalone_predict import decode

    path = tmp_path / "camera.jpg"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(
        path, "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03"
                           b"\xff\xff\xff\xff")
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        with Image.open(path) as im:  # Pillow itself does warn about this file
            im.getexif()
            im.load()
        from PIL import ImageOps

        with Image.open(path) as im:
            ImageOps.exif_transpose(im)
    assert any("EXIF" in str(w.message) for w in heard)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        pixels = load_rgb(path, (32, 24))
        again = decode(path, (32, 24))
    assert heard == [] and pixels.shape == again.shape == (24, 32, 3)
    assert abs(int(pixels[12, 16, 0]) - 200) < 10
