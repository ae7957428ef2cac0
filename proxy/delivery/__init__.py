"""How an authorized object reaches the client, one module per method behind one interface
(method.py: `Method`, `Link`): stream.py (through the proxy), redirect.py (a presigned S3
URL) and cloudfront.py (a CloudFront signed URL or signed cookies), with presentation.py (the
headers a route shows an object with) beside them. A new method is one new module implementing
`Method`, added to the table in surfaces/downloads.py.
"""

from .cloudfront import CloudFront
from .method import Link, Method
from .redirect import LinkCache, Redirect, SignedLink, wants_json
from .stream import Stream

__all__ = [
    "CloudFront",
    "Link",
    "LinkCache",
    "Method",
    "Redirect",
    "SignedLink",
    "Stream",
    "wants_json",
]
