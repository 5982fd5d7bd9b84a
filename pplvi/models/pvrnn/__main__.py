"""``python -m pplvi.models.pvrnn reproduce [options]``: see :mod:`pplvi.models.pvrnn.reproduce`."""

import sys

from pplvi.models.pvrnn.reproduce import main

sys.exit(main())
