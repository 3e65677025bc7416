"""Face-mask door appliance: camera -> face detector -> mask classifier -> decision -> buzzer, LEDs, relay."""

from pathlib import Path

# The release (pyproject.toml reads it from here; CHANGELOG.md says what each one changed).
__version__ = "0.3.0"

# The shipped model, its card and the asset manifest travel inside the package as appliance/models (package data
# in the wheel the Pi installs). In a checkout that folder is a link to the repository's models/, their documented
# place; resolving it names the real folder, so paths in messages read models/... there and site-packages/... on a Pi.
MODELS_DIR = (Path(__file__).resolve().parent / "models").resolve()
