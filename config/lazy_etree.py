"""lxml's ``etree``, imported where it is first used.

Most organisms speak JSON alone: lxml costs a process about 4 MiB and tens of
milliseconds to import, which the XML codecs, XSD schemas and XML replies pay only
when one of them runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sporeflow.config.lazy_names import LazyModule

if TYPE_CHECKING:
    from lxml import etree as etree
else:
    etree = LazyModule("lxml.etree")
