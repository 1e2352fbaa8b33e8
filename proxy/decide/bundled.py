"""Every table the decision reads from the package's own files, read in one call at start.

The loaders are cached on first use, so a CLI command that never routes never reads them.
``serve`` calls :func:`read_all` while it builds the app: a request must not be the first
to open these files, because then it does blocking file I/O on the event loop, and when the
process is out of file descriptors (EMFILE at a traffic peak) or the disk is unreadable, it
fails with a 500 that has nothing to do with the request.
"""

from __future__ import annotations

from .fields import openai_field_ranges, openai_field_types, openai_fields
from .lexicon import bundled_domain, bundled_lexicon
from .ngram import bundled_ngram


def read_all() -> None:
    """Fill every cached loader; a broken shipped file fails the start, not a request."""
    openai_fields()
    openai_field_types()
    openai_field_ranges()
    bundled_lexicon()
    bundled_domain()
    bundled_ngram()
