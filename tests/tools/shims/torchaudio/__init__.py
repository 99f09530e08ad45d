"""Import-only stand-in for torchaudio in the test toolbox.

llamafactory 0.9.5 imports torchaudio at module level (data/mm_plugin.py) although merging
a text model never touches audio; the CUDA-only torchaudio wheel cannot load on this CPU
machine. Any real use fails loudly.
"""


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("torchaudio is not installed in the TuneDeck test toolbox")


load = _unavailable


class functional:  # noqa: N801 - mirrors torchaudio.functional
    resample = staticmethod(_unavailable)
