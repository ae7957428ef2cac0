"""What a client can ask, one module each; the Gateway (app.py) chooses which answers.

- access.py: who is asking and may they (tokens, share links, rules, rate limits); shared.
- downloads.py: GET/HEAD of an object (stream or redirect), and the caches of S3's answers.
- uploads.py: PUT of an object (through the proxy, or 307 to a presigned PUT).
- signing.py: the sign API, batches of the others' links and upload forms.
The revocation endpoint lives with the state it changes (state/admin.py).
"""

from .access import Access, answer_cors
from .downloads import Downloads
from .signing import Signing
from .uploads import Uploads

__all__ = ["Access", "Downloads", "Signing", "Uploads", "answer_cors"]
