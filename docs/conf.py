"""Sphinx configuration for the stablesoftmax documentation.

Build (warnings are errors, no network needed)::

    sphinx-build -W -b html docs /tmp/docs-out
    sphinx-build -W -b doctest docs /tmp/docs-doctest   # runs every example, the docstrings' included
"""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import stablesoftmax

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "stablesoftmax"
author = "The stablesoftmax developers"
copyright = "2026, The stablesoftmax developers"  # noqa: A001 - the name Sphinx reads
release = stablesoftmax.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "stablesoftmax_docs",
    "perf_charts",
]

exclude_patterns = ["_build", "_generated/*.inc"]
default_role = "code"  # `x` in a page is code, as in the contract's own text

# --- autodoc / autosummary / numpydoc -------------------------------------------------------
autosummary_generate = False  # the pages are written by stablesoftmax_docs from __all__
autodoc_typehints = "none"  # numpydoc's Parameters section says the types, in words
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# --- doctest: the docstrings' examples and the pages' examples -------------------------------
doctest_global_setup = """
import warnings
import numpy as np
import stablesoftmax
import stablesoftmax as ss
from stablesoftmax import naive
try:
    import torch
except ImportError:
    torch = None
"""
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1

# --- no network: nothing is fetched at build time ---------------------------------------------
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}  # intersphinx is not loaded at all

# --- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"stablesoftmax {release}"
html_static_path: list[str] = []
# MathJax is loaded by the reader's browser from Sphinx's default address; the build fetches nothing.
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
