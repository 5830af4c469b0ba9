"""Where the project's configuration lives (a leaf module: everything may import it)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
