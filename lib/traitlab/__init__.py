"""traitlab: trait vectors in language models, measured with nnsight.

The package is split by concern; imports flow one way:
``paths/atomic`` → ``zoo`` → ``models``/``sites`` → ``chat``/``data`` → ``activations``
→ ``directions``/``metrics`` → ``params``/``runinfo``/``plots`` → ``experiments`` → ``cli``.
"""

__version__ = "0.1.0"
