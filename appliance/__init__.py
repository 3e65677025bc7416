"""Face-mask door appliance: camera -> face detector -> mask classifier -> decision -> buzzer, LEDs, relay."""

from pathlib import Path

__version__ = "0.1.0"

# The repository's models/ folder: the shipped model, its card and the asset manifest. The Pi installer copies
# these next to the service's state; a source checkout or editable install finds them here.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
