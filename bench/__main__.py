"""``python -m bench``: every benchmark and one table (``bench/all.py``)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from all import main  # noqa: E402  (bench/all.py)

main()
