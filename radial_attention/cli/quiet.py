"""Library notices that are not the user's concern in a CLI run, silenced one message at a time.

- transformers (>= 5), loading an image-to-video pipeline without torchvision installed, logs
  "`CLIPImageProcessor` requires torchvision (not installed); falling back to
  `CLIPImageProcessorPil` ..." once: the PIL processor is what the pipeline needs, and the user
  can do nothing about it short of installing torchvision.
- diffusers' context parallelism (``generate --sequence-parallel``) calls torch's deprecated
  ``_functional_collectives.all_gather_tensor``, which warns (FutureWarning) on every rank.

Everything else (other messages of the same loggers and categories) still shows. ``--debug``
shows these too.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

# (logger name, text the record's message contains)
LOG_NOTICES = [
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
]
# (regular expression matching the start of the message, category)
WARNING_NOTICES = [
    (r"`torch\.distributed\._functional_collectives\.all_gather_tensor` is deprecated", FutureWarning),
]


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextlib.contextmanager
def quiet_library_notices():
    """Inside: the notices above are not shown; on exit the filters are removed again."""
    filters = []
    with warnings.catch_warnings():
        for pattern, category in WARNING_NOTICES:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        for name, fragment in LOG_NOTICES:
            f = _DropMessages(fragment)
            logging.getLogger(name).addFilter(f)
            filters.append((name, f))
        try:
            yield
        finally:
            for name, f in filters:
                logging.getLogger(name).removeFilter(f)
