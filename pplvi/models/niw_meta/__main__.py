"""``python -m pplvi.models.niw_meta reproduce [options]``: see :mod:`pplvi.models.niw_meta.reproduce`."""

import sys

from pplvi.models.niw_meta.reproduce import main

sys.exit(main())
