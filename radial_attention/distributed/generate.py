# Deprecated alias of a moved module (see radial_attention._deprecation.MOVED); goes in the next release.
from radial_attention._deprecation import moved_module

__getattr__, __dir__ = moved_module(__name__)
