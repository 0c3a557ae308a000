"""Export tracked masks to the formats training and evaluation tools read (COCO instance
segmentation, YOLO segmentation/detection, MOT Challenge, MOTS, YouTube-VIS), and import
COCO and YouTube-VIS back into frame labels.

One module per format; :mod:`.source` reads FiftyOne, :mod:`.run` stages and publishes,
:mod:`.polygons` turns masks into polygons for the formats that need them.
"""

from .importer import ImportReport, import_tracks
from .options import FORMATS, ExportOptions
from .report import ExportProgress, ExportReport
from .run import MANIFEST, ExportRun, check_output_dir, export_tracks

__all__ = [
    "FORMATS", "MANIFEST", "ExportOptions", "ExportProgress", "ExportReport", "ExportRun", "ImportReport",
    "check_output_dir", "export_tracks", "import_tracks",
]
