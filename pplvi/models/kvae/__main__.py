"""``python -m pplvi.models.kvae reproduce [options]``: see :mod:`pplvi.models.kvae.reproduce`."""

import sys

from pplvi.models.kvae.reproduce import main

sys.exit(main())
