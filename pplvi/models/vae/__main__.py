"""``python -m pplvi.models.vae reproduce [options]``: see :mod:`pplvi.models.vae.reproduce`."""

import sys

from pplvi.models.vae.reproduce import main

sys.exit(main())
