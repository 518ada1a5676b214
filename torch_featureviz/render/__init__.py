"""Turn maps and filters into pictures: pure uint8 grids and overlays, PNG encoding, matplotlib
figures."""

from torch_featureviz.render.figures import (
    map_similarity,
    save_comparison_figure,
    save_feature_figures,
    save_filter_figures,
    save_grid_figure,
    save_overview,
    save_similarity_figure,
)
from torch_featureviz.render.grids import (
    make_feature_grid,
    make_filter_grid,
    make_image_grid,
    to_display_image,
)
from torch_featureviz.render.overlay import overlay_map

__all__ = [
    "make_feature_grid",
    "make_filter_grid",
    "make_image_grid",
    "map_similarity",
    "overlay_map",
    "save_comparison_figure",
    "save_feature_figures",
    "save_filter_figures",
    "save_grid_figure",
    "save_overview",
    "save_similarity_figure",
    "to_display_image",
]
