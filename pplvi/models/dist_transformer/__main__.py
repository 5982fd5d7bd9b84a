"""``python -m pplvi.models.dist_transformer reproduce [--quick]``: see
:mod:`pplvi.models.dist_transformer.reproduce`."""

import sys

from pplvi.models.dist_transformer.reproduce import main

sys.exit(main())
