"""``python -m pplvi.models.variational_seeds reproduce [--quick]``: see
:mod:`pplvi.models.variational_seeds.reproduce`."""

import sys

from pplvi.models.variational_seeds.reproduce import main

sys.exit(main())
