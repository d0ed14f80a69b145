"""Op definitions. Importing this package registers every op irtool knows.

Schemas, shape rules and cost rules live in the topic modules (imported by ``defs``); channel
rules, used by the channel dependency analysis, are attached in ``channels``.
"""

from . import defs  # noqa: F401
from . import channels  # noqa: F401
