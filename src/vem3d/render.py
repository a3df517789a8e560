"""Pictures of a run for people: mesh previews, slice montages with masks, a 3D viewer page.

Figures are drawn with matplotlib's Agg canvas (no display needed); the viewer is a
self-contained plotly page that works offline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from vem3d.atomic import write_atomically, write_text_atomically
from vem3d.labels import class_values, label_slices, read_class_labels
from vem3d.mesh import decimate_mesh, read_stl_simplified, stl_face_count
from vem3d.preprocess import normalise_percentile
from vem3d.slices import list_slices, read_slice, read_stack_slices, stack_slice_names

log = logging.getLogger(__name__)

NM_PER_UM = 1000.0
MESH_COLOUR = np.array([0.85, 0.45, 0.25])
OBLIQUE_VIEW = (30, -60)  # elevation and azimuth of the preview's 3D camera, degrees
# The preview's two flat views: (title, horizontal axis, vertical axis, axis looked
# along, +1 when looking down it from its high end, -1 from its low end, whether the
# vertical axis grows downwards). The top view shows the stack as its slices and the
# montage do (x to the right, y down), which is the view from the first slice.
PREVIEW_PROJECTIONS = (
    ("top (along z, as the slices)", 0, 1, 2, -1, True),
    ("side (along y)", 0, 2, 1, -1, False),
)
MASK_COLOUR = (1.0, 0.15, 0.1)
REFERENCE_COLOUR = "yellow"


def _save_figure(figure: Figure, path: str | os.PathLike, dpi: int) -> None:
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=dpi))


def _message_figure(message: str) -> Figure:
    figure = Figure(figsize=(6, 2))
    figure.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return figure


def shaded_face_colours(triangles: np.ndarray, light=(0.3, -0.5, 0.8)) -> np.ndarray:
    """Lambert-shaded RGB colour per triangle (both sides lit alike).

    Parameters
    ----------
    triangles : ndarray, shape (n_faces, 3, 3)
        Corner coordinates (x, y, z).
    light : (float, float, float)
        Direction towards the light.

    Returns
    -------
    ndarray of float, shape (n_faces, 3)
        RGB in [0, 1].
    """
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    direction = np.asarray(light, dtype=np.float64) / np.linalg.norm(light)
    brightness = 0.35 + 0.65 * np.abs(normals @ direction)
    return brightness[:, np.newaxis] * MESH_COLOUR


def render_mesh_views(
    vertices: np.ndarray,
    faces: np.ndarray,
    path: str | os.PathLike,
    max_faces: int = 20_000,
    title: str = "",
) -> int:
    """Render a mesh from three angles into one PNG: oblique in 3D, and top and side as flat
    projections (the nearer faces drawn over the farther).

    Parameters
    ----------
    vertices : ndarray, shape (n_vertices, 3)
        Coordinates (x, y, z) in nanometres, as in the STL files; axes are drawn in um.
    faces : ndarray of int, shape (n_faces, 3)
        An empty mesh gives a picture saying so.
    path : path
        PNG to write.
    max_faces : int
        Meshes with more faces are simplified first (:func:`vem3d.mesh.decimate_mesh`).
    title : str
        Figure title.

    Returns
    -------
    int
        Number of faces drawn.
    """
    if len(faces) == 0:
        figure = _message_figure(f"{title}\nno mesh: nothing was segmented")
        _save_figure(figure, path, dpi=100)
        return 0
    vertices, faces = decimate_mesh(vertices, faces, max_faces)
    triangles = vertices[faces].astype(np.float64) / NM_PER_UM
    colours = shaded_face_colours(triangles)
    low, high = triangles.reshape(-1, 3).min(axis=0), triangles.reshape(-1, 3).max(axis=0)
    extent = high - low
    figure = Figure(figsize=(13, 4.6))
    figure.subplots_adjust(left=0.02, right=0.98, wspace=0.5)  # room for the 3D axes' z labels
    axis = figure.add_subplot(1, 3, 1, projection="3d")
    axis.add_collection3d(Poly3DCollection(triangles, facecolors=colours, edgecolors="none"))
    axis.set_xlim(low[0], high[0])
    axis.set_ylim(low[1], high[1])
    axis.set_zlim(low[2], high[2])
    axis.set_box_aspect(np.maximum(extent, 1e-6 * extent.max()))
    axis.view_init(elev=OBLIQUE_VIEW[0], azim=OBLIQUE_VIEW[1])
    for index, name in enumerate("xyz"):
        getattr(axis, f"set_{name}label")(f"{name} (um)")
        # Ticks in proportion to the axis's drawn length, so that a thin stack's
        # short z axis does not get as many labels as the long ones.
        share = extent[index] / extent.max()
        getattr(axis, f"{name}axis").set_major_locator(MaxNLocator(nbins=max(2, round(6 * share))))
    axis.set_title("oblique")
    # Flat views are drawn in 2D, the far faces first: matplotlib's 3D axes seen
    # end-on ran their labels into each other.
    for column, (view, across, up, along, looking_down, downwards) in enumerate(PREVIEW_PROJECTIONS, start=2):
        axis = figure.add_subplot(1, 3, column)
        order = np.argsort(looking_down * triangles[:, :, along].mean(axis=1), kind="stable")
        axis.add_collection(
            PolyCollection(triangles[order][:, :, [across, up]], facecolors=colours[order], edgecolors="none")
        )
        axis.set_xlim(low[across], high[across])
        axis.set_ylim(*((high[up], low[up]) if downwards else (low[up], high[up])))
        axis.set_aspect("equal")
        axis.set_xlabel(f"{'xyz'[across]} (um)")
        axis.set_ylabel(f"{'xyz'[up]} (um)")
        axis.set_title(view)
    figure.suptitle(f"{title} ({len(faces)} faces drawn)" if title else f"{len(faces)} faces drawn")
    _save_figure(figure, path, dpi=90)
    return len(faces)


def _read_mesh_or_empty(stl_path: Path, max_faces: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The mesh of an STL file simplified to ``max_faces`` (read a chunk at a time) and its
    full face count; an empty mesh where the file is missing (nothing segmented)."""
    if stl_path.is_file():
        return *read_stl_simplified(stl_path, max_faces), stl_face_count(stl_path)
    return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), 0


def choose_montage_slices(n_slices: int, n_panels: int) -> list[int]:
    """Indices of up to ``n_panels`` slices spread evenly from the first to the last."""
    return sorted({int(round(index)) for index in np.linspace(0, n_slices - 1, min(n_panels, n_slices))})


def render_montage(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    references: list[np.ndarray | None],
    titles: list[str],
    path: str | os.PathLike,
    reference_name: str = "reference",
    columns: int = 3,
) -> None:
    """Draw slices with the predicted mask (red, translucent) and a reference (yellow outline).

    Parameters
    ----------
    images : list of ndarray, shape (rows, columns)
        Grey slices of any dtype, shown between their 0.5 and 99.5 percentiles.
    masks : list of ndarray, shape (rows, columns)
        Predicted masks (non-zero = foreground), same shapes as the images.
    references : list of (ndarray or None)
        Label or ground-truth mask per slice, or None where the slice has none.
    titles : list of str
        Panel titles (slice names).
    path : path
        PNG to write.
    reference_name : str
        What the references are, for the legend ("ground truth", "label").
    columns : int
        Panels per row.
    """
    n_rows = -(-len(images) // columns)
    figure = Figure(figsize=(4 * columns, 4 * n_rows + 0.5), constrained_layout=True)
    for panel, (image, mask, reference, title) in enumerate(zip(images, masks, references, titles, strict=True)):
        axis = figure.add_subplot(n_rows, columns, panel + 1)
        axis.imshow(normalise_percentile(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        overlay = np.zeros(mask.shape + (4,), np.float32)
        overlay[mask > 0] = (*MASK_COLOUR, 0.4)
        axis.imshow(overlay, interpolation="nearest")
        if reference is not None and (reference > 0).any() and not (reference > 0).all():
            axis.contour(reference > 0, levels=[0.5], colors=REFERENCE_COLOUR, linewidths=1.0)
        axis.set_title(title if reference is None else f"{title} (with {reference_name})", fontsize=10)
        axis.set_axis_off()
    figure.suptitle(f"predicted mask: translucent red; {reference_name}: yellow outline")
    _save_figure(figure, path, dpi=80)


def montage_from_folders(
    source: str | os.PathLike,
    mask_dirs,
    path: str | os.PathLike,
    reference_dir: str | os.PathLike | None = None,
    reference_name: str = "reference",
    n_panels: int = 6,
    classes=("foreground",),
    class_name: str | None = None,
    label_values=None,
) -> list[str]:
    """Montage of a sample's slices with one class's predicted masks and, where present, references.

    With a reference folder (ground truth or sparse labels) the panels are spread
    over the slices that have a reference mask, so that every panel can be compared;
    otherwise over all slices.

    Parameters
    ----------
    source : path
        The sample's raw slices: a folder, or a multi-page TIFF or MRC stack.
    mask_dirs : list of path
        Predicted mask chunk folders (slice names as in ``source``).
    path : path
        PNG to write.
    reference_dir : path, optional
        Folder of references named like the slices: label maps or one mask
        folder per class (:mod:`vem3d.labels`).
    reference_name : str
        What the references are, for titles and legend.
    n_panels : int
        Number of slices shown.
    classes : sequence of str
        All class names, to decode the references.
    class_name : str, optional
        The class the masks are of (default: the first).
    label_values : mapping, optional
        Label-map pixel values per class (:func:`vem3d.labels.class_values`).

    Returns
    -------
    list of str
        Names of the slices shown.
    """
    masks = {mask_path.stem: mask_path for folder in mask_dirs for mask_path in list_slices(folder)}
    references = label_slices(reference_dir, classes) if reference_dir else {}
    class_index = list(classes).index(class_name or classes[0]) + 1
    values = class_values(classes, label_values)
    names = [name for name in stack_slice_names(source) if name in masks]
    candidates = [name for name in names if name in references] or names
    shown = [candidates[index] for index in choose_montage_slices(len(candidates), n_panels)]
    shown_masks = [read_slice(masks[name]) for name in shown]
    render_montage(
        list(read_stack_slices(source, shown)),
        shown_masks,
        [
            read_class_labels(references[name], values, mask.shape) == class_index if name in references else None
            for name, mask in zip(shown, shown_masks)
        ],
        shown,
        path,
        reference_name=reference_name,
    )
    log.info("montage of slices %s", shown)
    return shown


def write_mesh_viewer(
    vertices: np.ndarray,
    faces: np.ndarray,
    path: str | os.PathLike,
    max_faces: int = 200_000,
    title: str = "",
) -> int:
    """Write a self-contained HTML page that shows a mesh in 3D (rotate, zoom, pan).

    The page embeds plotly.js, so it opens offline and inside the Snakemake report.

    Parameters
    ----------
    vertices : ndarray, shape (n_vertices, 3)
        Coordinates (x, y, z) in nanometres; shown in um.
    faces : ndarray of int, shape (n_faces, 3)
        An empty mesh gives a page saying so.
    path : path
        HTML file to write.
    max_faces : int
        Meshes with more faces are simplified first (:func:`vem3d.mesh.decimate_mesh`),
        so that a browser stays responsive.
    title : str
        Page and plot title.

    Returns
    -------
    int
        Number of faces in the page.
    """
    if len(faces):
        vertices, faces = decimate_mesh(vertices, faces, max_faces)
    points = vertices.astype(np.float32) / NM_PER_UM
    surface = go.Mesh3d(
        x=points[:, 0],
        y=points[:, 1],
        z=points[:, 2],
        i=faces[:, 0].astype(np.int32),
        j=faces[:, 1].astype(np.int32),
        k=faces[:, 2].astype(np.int32),
        color="rgb({},{},{})".format(*(MESH_COLOUR * 255).astype(int)),
        flatshading=False,
        lighting={"ambient": 0.35, "diffuse": 0.8, "specular": 0.2},
        name=title,
    )
    heading = f"{title}: {len(faces)} faces" if len(faces) else f"{title}: no mesh, nothing was segmented"
    figure = go.Figure(
        data=[surface],
        layout={
            "title": {"text": heading},
            "scene": {
                "aspectmode": "data",
                "xaxis": {"title": {"text": "x (um)"}},
                "yaxis": {"title": {"text": "y (um)"}},
                "zaxis": {"title": {"text": "z (um)"}},
            },
            "margin": {"l": 0, "r": 0, "b": 0, "t": 40},
        },
    )
    write_text_atomically(path, figure.to_html(include_plotlyjs=True, full_html=True))
    return len(faces)


def mesh_pictures_from_stl(
    stl_path: str | os.PathLike,
    preview_path: str | os.PathLike,
    viewer_path: str | os.PathLike,
    preview_max_faces: int = 20_000,
    viewer_max_faces: int = 200_000,
) -> tuple[int, int]:
    """Both pictures of an STL file (nm): the preview PNG (:func:`render_mesh_views`) and
    the 3D viewer page (:func:`write_mesh_viewer`). A missing file means an empty mesh.

    The STL is read once, simplified to the larger of the two face budgets; the
    preview simplifies that further. One pass over a 17 M-face STL (870 MB) takes
    1.3 s, as much as everything else the two pictures need.

    Parameters
    ----------
    stl_path : path
        Binary STL, coordinates in nm.
    preview_path : path
        PNG of the mesh from three angles (:func:`render_mesh_views`).
    viewer_path : path
        Self-contained HTML page showing the mesh in 3D (:func:`write_mesh_viewer`).
    preview_max_faces, viewer_max_faces : int
        Faces at most in each; larger meshes are simplified for them.

    Returns
    -------
    (int, int)
        Faces drawn in the preview, and shown in the viewer.
    """
    stl_path = Path(stl_path)
    vertices, faces, n_faces = _read_mesh_or_empty(stl_path, max(preview_max_faces, viewer_max_faces))
    drawn = render_mesh_views(vertices, faces, preview_path, preview_max_faces, title=stl_path.stem)
    log.info("rendered %s: %d of %d faces drawn", stl_path, drawn, n_faces)
    shown = write_mesh_viewer(vertices, faces, viewer_path, viewer_max_faces, title=stl_path.stem)
    log.info("3D viewer of %s: %d of %d faces", stl_path, shown, n_faces)
    return drawn, shown
