"""Uploads (issue 17), both ways: streamed through the proxy (`delivery: stream`, PUT) or
sent straight to S3 with a presigned PUT (`delivery: redirect`, 307) or presigned POST form
(the sign API's `uploads`). The rest of the proxy uses only what is exported here.

The request has been routed, authenticated and authorized before any of this runs; S3 is
touched only after that. docs/uploads.md is the user's guide.
"""

from .presigned import post_form, redirect_put
from .receive import ClientGone, Received, check_absent, receive
from .rules import UploadTarget, check_size, upload_target

__all__ = [
    "ClientGone",
    "Received",
    "UploadTarget",
    "check_absent",
    "check_size",
    "post_form",
    "receive",
    "redirect_put",
    "upload_target",
]
