"""``python -m datagen --env-id ... --episodes N --out DIR``: generate a dataset (see ``datagen.generate``)."""

import sys

from datagen.generate import main

sys.exit(main())
