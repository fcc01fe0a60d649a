"""Sphinx configuration: furo theme, MyST Markdown pages, API from docstrings, no network."""

from __future__ import annotations

import anydgram

project = "anydgram"
author = "The anydgram developers"
copyright = "2026, The anydgram developers"
release = anydgram.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Markdown everywhere; the API pages embed reStructuredText autodoc directives.
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# The build must not touch the network: no intersphinx inventories are fetched.
intersphinx_mapping: dict[str, tuple[str, None]] = {}

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"anydgram {release}"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
