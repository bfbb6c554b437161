"""Export bundles: a compiled graph's cubins, PTX, manifest, C launcher and Python loader, which run
without tilefuse or Triton."""

from .bundle import export_bundle, parse_targets
from .manifest import BUNDLE_FORMAT, verify_bundle
from .plan import ExportError, launch_list

__all__ = ["BUNDLE_FORMAT", "ExportError", "export_bundle", "launch_list", "parse_targets", "verify_bundle"]
