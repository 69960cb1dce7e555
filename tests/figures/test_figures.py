"""medlsam.figures: planes in the radiological convention with square mm pixels, organ colours,
sheets, overview and organ figures, box plots."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ORIENTATIONS, reorient
from PIL import Image

from medlsam.figures.colors import PALETTE, hex_to_rgb, organ_colors
from medlsam.figures.organ import OrganSlice, render_organ_slice
from medlsam.figures.overview import OverviewInput, organ_centre, render_overview
from medlsam.figures.planes import PlaneView, grey, paint
from medlsam.figures.plots import boxplot_figure, compare_figure
from medlsam.figures.sheet import Sheet
from medlsam.io import Volume

SPACING = (2.0, 1.5, 5.0)


def _volume(shape=(20, 16, 12)) -> Volume:
    """Distinct values everywhere (so any wrong flip or transpose shows), RAS, anisotropic."""
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-20.0, 5.0, 100.0)
    return Volume(data, affine)


@pytest.mark.parametrize("perm,flips", ORIENTATIONS[::5])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_planes_look_the_same_in_every_axis_order(plane, perm, flips):
    ras = _volume()
    other = reorient(ras, perm, flips)
    centre = np.array([7, 5, 4])  # the same world point in both files
    world = ras.to_world(centre)
    centre_other = np.rint(other.to_index(world)).astype(int)
    a = PlaneView.make(plane, ras.shape, ras.affine, 1.0)
    b = PlaneView.make(plane, other.shape, other.affine, 1.0)
    assert a.out_shape == b.out_shape
    np.testing.assert_array_equal(
        a.take(ras.data, centre[a.normal]), b.take(other.data, centre_other[b.normal])
    )


def test_planes_follow_the_radiological_convention_and_spacing():
    vol = _volume()
    axial = PlaneView.make("axial", vol.shape, vol.affine, 1.0)
    # rows follow j (anterior-posterior), columns i (left-right), one pixel per mm
    assert axial.out_shape == (16 * 1.5, 20 * 2.0)
    img = axial.take(vol.data, 3)
    # top row is the most anterior j, left column the patient's right (largest i in RAS)
    assert img[0, 0] == vol.data[19, 15, 3]
    coronal = PlaneView.make("coronal", vol.shape, vol.affine, 1.0)
    assert coronal.out_shape == (12 * 5, 20 * 2)  # not squashed: 5 mm slices are 5 px tall
    assert coronal.take(vol.data, 2)[0, 0] == vol.data[19, 2, 11]  # superior at the top
    sagittal = PlaneView.make("sagittal", vol.shape, vol.affine, 1.0)
    assert sagittal.take(vol.data, 4)[0, 0] == vol.data[4, 15, 11]  # anterior on the left


def test_box_edges_match_the_mask_on_the_display():
    vol = _volume()
    label = np.zeros(vol.shape, np.uint8)
    lo, hi = (3, 4, 2), (9, 11, 7)
    label[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = 1
    for plane in ("axial", "coronal", "sagittal"):
        view = PlaneView.make(plane, vol.shape, vol.affine, 1.0)
        shown = view.take(label, 5)
        rows, cols = np.nonzero(shown)
        r0, c0, r1, c1 = view.box(lo, hi)
        assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (r0, c0, r1, c1)


def test_paint_tints_in_the_organ_colour_and_outlines_the_reference():
    colors = organ_colors([4, 2])
    assert colors == {4: PALETTE[0], 2: PALETTE[1]}  # by position in the run's class list
    rgb = grey(np.full((10, 10), 40.0))  # mid grey in the soft-tissue window
    label = np.zeros((10, 10), int)
    label[2:8, 2:8] = 2
    ref = np.zeros((10, 10), int)
    ref[3:9, 3:9] = 2
    paint(rgb, label, colors, fill=0.5, outline=False, reference=ref)
    expected = 0.5 * 0.5 + 0.5 * np.array(hex_to_rgb(PALETTE[1]))
    np.testing.assert_allclose(rgb[5, 5], expected, atol=1e-6)  # inside, off the outline
    np.testing.assert_allclose(rgb[0, 0], 0.5, atol=1e-6)  # background untouched
    lighter = 0.5 + 0.5 * np.array(hex_to_rgb(PALETTE[1]))
    np.testing.assert_allclose(rgb[3, 5], lighter, atol=1e-6)  # reference edge


def test_sheet_writes_a_png_of_its_size_with_text(tmp_path):
    sheet = Sheet(300, 120)
    sheet.image(np.ones((50, 60, 3)), 10, 40)
    sheet.text(10, 5, "liver", size=14)
    sheet.rect(100, 40, 200, 100, "#ff0000")
    image = np.asarray(Image.open(sheet.save(tmp_path / "a.png")).convert("RGB"))
    assert image.shape == (120, 300, 3)
    assert (image[40:90, 10:70] == 255).all()  # the raster, placed 1:1
    assert (image[5:25, 10:60] > 128).any()  # text drawn in light ink on the dark background
    assert image[40:100, 100, 0].max() > 200 and image[60, 150, 0] < 50  # outline, not fill


def _overview_input(reference=True) -> OverviewInput:
    vol = _volume((30, 28, 16))
    image = np.full(vol.shape, 40.0, np.float32)
    label = np.zeros(vol.shape, np.uint8)
    label[5:12, 5:12, 3:9] = 1
    label[15:25, 10:20, 6:14] = 2
    boxes = {1: [((4, 4, 2), (12, 12, 9))]}  # organ 2 has no box: centred on its mask
    names = {1: "liver", 2: "spleen", 3: "pancreas"}
    ref = label.copy() if reference else None
    return OverviewInput(
        image, vol.affine, label, boxes, [1, 2, 3], names, organ_colors([1, 2, 3]), ref
    )


def test_overview_centres_on_boxes_then_masks_and_lists_missing_organs():
    data = _overview_input()
    centre, source = organ_centre(data, 1)
    assert source == "box" and tuple(centre) == (8, 8, 5)
    centre, source = organ_centre(data, 2)
    assert source == "mask" and tuple(centre) == (19, 14, 9)
    assert organ_centre(data, 3) == (None, "none")
    sheet = render_overview(data, "case", "sub")
    texts = " ".join(t.get_text() for t in sheet.figure.texts)
    assert "not found: pancreas" in texts and "liver (1)" in texts and "spleen (2)" in texts
    image = np.asarray(Image.open(__import__("io").BytesIO(sheet.png())).convert("RGB"))
    assert image.shape == (sheet.height, sheet.width, 3)
    # the liver colour, blended over grey, appears in the figure
    liver = np.round((0.5 * 0.65 + 0.35 * np.array(hex_to_rgb(PALETTE[0]))) * 255)
    assert (np.abs(image.astype(int) - liver).sum(axis=-1) <= 3).any()


def test_organ_figure_names_the_segmenter_confidence():
    data = _overview_input(reference=False)
    organ = OrganSlice(
        data.image,
        data.label,
        data.affine,
        index=5,
        class_id=1,
        boxes=[{0: (4.0, 13.0), 1: (4.0, 13.0)}],
        confidence=0.91,
        confidence_name="SAM predicted IoU",
        names=data.names,
        colors=data.colors,
    )
    sheet = render_organ_slice(organ, "case_1", banner="UPPER BOUND")
    texts = " ".join(t.get_text() for t in sheet.figure.texts)
    assert "SAM predicted IoU: 0.91" in texts and "liver (1)" in texts and "UPPER BOUND" in texts
    assert "score" not in texts.lower()
    assert len(sheet.figure.patches) == 2  # the box prompt and the banner


def test_boxplot_names_organs_with_n_and_compare_shows_every_run():
    fig = boxplot_figure(
        [("liver", "#ff0000", [0.9, 0.8, float("nan")]), ("spleen", "#00ff00", [])],
        "Dice",
        "DSC per organ",
        (0, 1),
    )
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["liver\nn=2", "spleen\nn=0"]
    assert ax.get_title() == "DSC per organ" and ax.get_ylabel() == "Dice"
    fig = compare_figure(["liver"], [("run a", [[0.9, 0.7]]), ("run b", [[0.5]])], "Dice", "t")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["run a", "run b"]
    assert fig.axes[0].get_xticklabels()[0].get_text() == "liver\nn=2/1"
