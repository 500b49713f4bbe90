"""Integrations with other libraries, one submodule each, imported by name.

Importing this package imports none of them (nor the library each one needs):

* :mod:`stablesoftmax.integrations.transformers`: Hugging Face Transformers
  models computing their loss with :func:`stablesoftmax.cross_entropy`.
"""

__all__: list[str] = []
