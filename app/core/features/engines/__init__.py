"""Where the caching job computes: this process (local) or a Ray cluster (ray). Neither
imports the other; both use :mod:`app.core.features.extract`."""
