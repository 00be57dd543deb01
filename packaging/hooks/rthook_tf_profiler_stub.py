"""PyInstaller runtime hook: a stand-in for TensorFlow's remote-profiler client extension.

``import tensorflow`` imports tf.profiler.experimental.client, which loads
``_pywrap_profiler_plugin`` (30-80 MB of native code) just to offer ``trace``/``monitor`` of a
remote TPU/GPU profiler server. Bottleneck Studio never calls them, so the build leaves the
extension out and this stub answers the import; calling it says why it is missing.
"""

import sys
import types

_NAME = "tensorflow.python.profiler.internal._pywrap_profiler_plugin"

if _NAME not in sys.modules:
    _stub = types.ModuleType(_NAME)

    def _not_bundled(*args, **kwargs):
        raise RuntimeError("remote profiling (tf.profiler.experimental.client) is not part of "
                           "the Bottleneck Studio build")

    _stub.trace = _not_bundled
    _stub.monitor = _not_bundled
    sys.modules[_NAME] = _stub
