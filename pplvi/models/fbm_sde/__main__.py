"""``python -m pplvi.models.fbm_sde reproduce [--quick]``: see :mod:`pplvi.models.fbm_sde.reproduce`."""

import sys

from pplvi.models.fbm_sde.reproduce import main

sys.exit(main())
