"""Reading FITS cutouts: layouts, header variants, and one clear error per bad input."""

import numpy as np
import pytest
from astropy.io import fits

from sbi_lens.fits_io import (
    ImageSpec,
    center_crop,
    load_cutouts,
    parse_bands,
    read_pixel_scale,
)
from sbi_lens.fits_writer import write_cutout

SPEC = ImageSpec(bands=("g", "r", "i"), image_shape=(32, 32), pixel_scale=0.2)


def _image(size=32, bands=3, seed=0):
    """Distinct planes: plane k has mean 10·k, so band order is checkable."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(bands, size, size)) + 10 * np.arange(bands)[:, None, None]).astype(
        np.float32
    )


@pytest.mark.parametrize("scale_keyword", ["cd", "cdelt", "pixscale"])
@pytest.mark.parametrize("cube", [True, False])
def test_round_trip_layouts_and_scale_keywords(tmp_path, cube, scale_keyword):
    image = _image()
    files = write_cutout(
        tmp_path / "lens.fits", image, SPEC.bands, 0.2, cube, scale_keyword=scale_keyword
    )
    assert len(files) == (1 if cube else 3)
    cutouts, x = load_cutouts(files, SPEC)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], image)
    assert cutouts[0].name == "lens" and cutouts[0].pixel_scale == pytest.approx(0.2, rel=1e-9)


def test_pixel_scale_from_rotated_cd_matrix_and_arcsec_cunit():
    angle = np.deg2rad(30)
    degrees = 0.2 / 3600
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CD1_1"], header["CD1_2"] = -degrees * np.cos(angle), degrees * np.sin(angle)
    header["CD2_1"], header["CD2_2"] = degrees * np.sin(angle), degrees * np.cos(angle)
    assert read_pixel_scale(header) == pytest.approx(0.2, rel=1e-9)
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "arcsec",
                          "CUNIT2": "arcsec", "CDELT1": -0.2, "CDELT2": 0.2})  # fmt: skip
    assert read_pixel_scale(header) == pytest.approx(0.2, rel=1e-9)
    assert read_pixel_scale(fits.Header({"PIXSCALE": 0.263})) == 0.263
    assert read_pixel_scale(fits.Header()) is None
    with pytest.raises(ValueError, match="non-square"):
        read_pixel_scale(fits.Header({"CDELT1": 0.2 / 3600, "CDELT2": 0.3 / 3600}))


def test_band_order_from_headers_names_and_flag(tmp_path):
    image = _image()
    # Cube written in i,r,g order with FILTERn keywords is reordered to the model's g,r,i.
    (cube,) = write_cutout(
        tmp_path / "c.fits", image[::-1], ("i", "r", "g"), 0.2, band_keyword="FILTER"
    )
    # Per-band files given out of order, identified by their BAND keyword.
    per_band = write_cutout(tmp_path / "p.fits", image, SPEC.bands, 0.2, cube=False)
    # No keywords: a cube in --bands order, and per-band files named *_g.fits etc.
    (bare,) = write_cutout(
        tmp_path / "b.fits", image[[2, 0, 1]], ("i", "g", "r"), 0.2, band_keyword=None
    )
    named = write_cutout(tmp_path / "n.fits", image, SPEC.bands, 0.2, cube=False, band_keyword=None)
    _, x = load_cutouts([cube, per_band[2], per_band[0], per_band[1], *named[::-1]], SPEC)
    for k in range(3):
        np.testing.assert_array_equal(x[k], image)
    _, x = load_cutouts([bare], SPEC, input_bands="i,g,r")
    np.testing.assert_array_equal(x[0], image)
    # A cube with an extra band keeps the model's bands only.
    extra = np.concatenate([image, image[:1] + 99])
    (gri_z,) = write_cutout(tmp_path / "z.fits", extra, ("g", "r", "i", "z"), 0.2)
    _, x = load_cutouts([gri_z], SPEC)
    np.testing.assert_array_equal(x[0], image)
    # Per-band files with an extra z band: four files per lens, z dropped.
    z_files = write_cutout(tmp_path / "pz.fits", extra, ("g", "r", "i", "z"), 0.2, cube=False)
    _, x = load_cutouts(z_files, SPEC, input_bands="g,r,i,z")
    np.testing.assert_array_equal(x[0], image)
    with pytest.raises(ValueError, match=r"has 3 bands \(g,r,z\), .*; missing i"):
        load_cutouts([z_files[k] for k in (0, 1, 3)], SPEC)
    with pytest.raises(ValueError, match="header says bands i,r,g but input_bands says g,r,i"):
        load_cutouts([cube], SPEC, input_bands="g,r,i")


def test_per_band_files_without_keywords_in_given_order(tmp_path):
    image = _image()
    files = []
    for k in range(len(SPEC.bands)):
        files.append(tmp_path / f"obj7-{k}.fits")  # no band in header or name
        hdu = fits.PrimaryHDU(image[k], header=fits.Header({"PIXSCALE": 0.2}))
        hdu.writeto(files[-1])
    cutouts, x = load_cutouts(files, SPEC)
    np.testing.assert_array_equal(x[0], image)
    assert cutouts[0].name == "obj7"
    _, x = load_cutouts([files[2], files[0], files[1]], SPEC, input_bands="i,g,r")
    np.testing.assert_array_equal(x[0], image)


def test_crop_takes_the_centre(tmp_path):
    big = _image(size=40)
    (path,) = write_cutout(tmp_path / "big.fits", big, SPEC.bands, 0.2)
    with pytest.raises(
        ValueError,
        match=r"big.fits: cutout is 40x40 pixels, the model expects 32x32; use crop=True",
    ):
        load_cutouts([path], SPEC)
    cutouts, x = load_cutouts([path], SPEC, crop=True)
    np.testing.assert_array_equal(x[0], big[:, 4:36, 4:36])
    assert cutouts[0].cropped
    # Odd margin: the window is shifted half a pixel towards the lower index.
    assert center_crop(np.arange(35 * 35).reshape(35, 35), (32, 32))[0, 0] == 35 + 1


def test_unique_names_for_repeated_stems(tmp_path):
    a = write_cutout(tmp_path / "a" / "lens.fits", _image(), SPEC.bands, 0.2)
    b = write_cutout(tmp_path / "b" / "lens.fits", _image(), SPEC.bands, 0.2)
    cutouts, _ = load_cutouts(a + b, SPEC)
    assert [c.name for c in cutouts] == ["a_lens", "b_lens"]
    # A suffixed name never takes the name of another input.
    c = write_cutout(tmp_path / "c" / "a_lens.fits", _image(), SPEC.bands, 0.2)
    cutouts, _ = load_cutouts(a + b + c + a, SPEC)
    names = [c.name for c in cutouts]
    assert len(set(names)) == 4 and names[:3] == ["a_lens", "b_lens", "a_lens_2"]


def test_multi_extension_files_need_a_named_extension(tmp_path):
    """A science + variance file is one lens, read from the named extension only."""
    image = _image()
    path = tmp_path / "mef.fits"
    header = fits.Header({"BAND1": "g", "BAND2": "r", "BAND3": "i", "PIXSCALE": 0.2})
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(image, header=header, name="SCI"),
            fits.ImageHDU(np.ones_like(image), header=header, name="VAR"),
        ]
    ).writeto(path)
    with pytest.raises(ValueError, match=r"mef.fits: 2 image extensions \['SCI', 'VAR'\]; choose"):
        load_cutouts([path, path], SPEC)
    cutouts, x = load_cutouts([path], SPEC, extension="sci")
    np.testing.assert_array_equal(x[0], image)
    with pytest.raises(ValueError, match=r"no image extension 'WHT'; its image HDUs are"):
        load_cutouts([path], SPEC, extension="WHT")


def test_no_pixel_scale_needs_the_flag(tmp_path):
    (path,) = write_cutout(tmp_path / "noscale.fits", _image(), SPEC.bands, 0.2, scale_keyword=None)
    with pytest.raises(
        ValueError,
        match=r"noscale.fits: no pixel scale .* 0.2 arcsec/pixel; use assume_pixel_scale=True",
    ):
        load_cutouts([path], SPEC)
    cutouts, _ = load_cutouts([path], SPEC, assume_pixel_scale=True)
    assert cutouts[0].pixel_scale is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write_cutout(d / "s.fits", _image(), "gri", 0.263),
         r"s.fits: pixel scale 0.263 arcsec/pixel, the model expects 0.2 arcsec/pixel"),
        (lambda d: write_cutout(d / "s.fits", _image(), "gri", 720, scale_keyword="pixscale"),
         r"s.fits: pixel scale 720 arcsec/pixel, the model expects 0.2"),
        (lambda d: write_cutout(d / "b.fits", _image(bands=2), "gr", 0.2),
         r"b.fits: has 2 bands \(g,r\), the model expects 3 \(g,r,i\); missing i"),
        (lambda d: write_cutout(d / "b.fits", _image(bands=4), "griz", 0.2, band_keyword=None),
         r"b.fits: cube has 4 bands, the model expects 3 \(g,r,i\)"),
        (lambda d: write_cutout(d / "b.fits", _image(), "grz", 0.2),
         r"b.fits: has 3 bands \(g,r,z\), the model expects 3 \(g,r,i\); missing i"),
        (lambda d: write_cutout(d / "b.fits", _image(), "gri", 0.2, cube=False)[:2],
         r"b_g.fits, .*b_r.fits: 2 single-band file\(s\) where a lens needs 3"),
        (lambda d: write_cutout(d / "small.fits", _image(size=24), "gri", 0.2),
         r"small.fits: cutout is 24x24 pixels, smaller than the model's 32x32"),
        (lambda d: write_cutout(d / "w.fits", _image()[:, :, :30], "gri", 0.2),
         r"w.fits: cutout is 32x30 pixels, smaller than the model's 32x32"),
    ],
)  # fmt: skip
def test_mismatches_give_clear_errors(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        load_cutouts(make(tmp_path), SPEC)


def test_nan_pixels_are_counted(tmp_path):
    image = _image()
    image[1, 3, 4] = np.nan
    image[2, 5, :2] = np.inf
    (path,) = write_cutout(tmp_path / "nan.fits", image, SPEC.bands, 0.2)
    with pytest.raises(ValueError, match=r"nan.fits: 3 NaN/Inf pixels \(r: 1, i: 2\)"):
        load_cutouts([path], SPEC)
    # Bad pixels outside the cropped window do not matter.
    big = _image(size=36)
    big[0, 0, 0] = np.nan
    (path,) = write_cutout(tmp_path / "edge.fits", big, SPEC.bands, 0.2)
    assert np.isfinite(load_cutouts([path], SPEC, crop=True)[1]).all()


def test_unreadable_inputs(tmp_path):
    corrupt = tmp_path / "corrupt.fits"
    corrupt.write_text("this is not a FITS file\n" * 20)
    with pytest.raises(ValueError, match=r"corrupt.fits: not a readable FITS file"):
        load_cutouts([corrupt], SPEC)
    (good,) = write_cutout(tmp_path / "good.fits", _image(), SPEC.bands, 0.2)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(
        ValueError, match=r"truncated.fits: not a readable FITS file \(File may have been truncated"
    ):
        load_cutouts([truncated], SPEC)
    with pytest.raises(ValueError, match=r"missing.fits: no such file"):
        load_cutouts([tmp_path / "missing.fits"], SPEC)
    table = tmp_path / "table.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
    ).writeto(table)
    with pytest.raises(ValueError, match=r"table.fits: no image data"):
        load_cutouts([table], SPEC)
    with pytest.raises(ValueError, match="duplicate band"):
        parse_bands("g,g,r")
    with pytest.raises(ValueError, match="no FITS files"):
        load_cutouts([], SPEC)


def test_image_in_an_extension_hdu(tmp_path):
    image = _image()
    path = tmp_path / "ext.fits"
    header = fits.Header({"PIXSCALE": 0.2, "BAND1": "g", "BAND2": "r", "BAND3": "i"})
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image.astype(">f8"), header=header)]).writeto(
        path
    )
    _, x = load_cutouts([path], SPEC)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[0], image)
