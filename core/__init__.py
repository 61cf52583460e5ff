"""elman: Elman recurrent networks in Keras 3.

The package installs as one import name. `elman.layers` holds the cell, `elman.apps` the four
applications, `elman.datasets` their data; the modules beside this file (`config`, `training`,
`tuning`, `export`, `cli`) are the generic parts every app shares.
"""

__version__ = "0.1.0"
