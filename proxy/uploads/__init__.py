"""Uploads (issue 17), both ways: streamed through the proxy (`delivery: stream`, PUT) or
sent straight to S3 with a presigned PUT (`delivery: redirect`, 307), presigned POST form
(the sign API's `uploads`) or presigned multipart upload (issue 27: the sign API's
`multipart`, `resume`, `complete` and `abort`). The rest of the proxy uses only what is
exported here.

The request has been routed, authenticated and authorized before any of this runs; S3 is
touched only after that. docs/uploads.md is the user's guide.
"""

from .multipart import (
    MULTIPART_KINDS,
    Answered,
    MultipartPlace,
    OpenUploads,
    PartSigning,
    abort,
    answer_entry,
    begin,
    complete,
    multipart_place,
    resume,
)
from .presigned import check_absent, post_form, redirect_put
from .receive import ClientGone, Received, receive, stored
from .rules import UploadTarget, check_size, upload_target

__all__ = [
    "MULTIPART_KINDS",
    "Answered",
    "ClientGone",
    "MultipartPlace",
    "OpenUploads",
    "PartSigning",
    "Received",
    "UploadTarget",
    "abort",
    "answer_entry",
    "begin",
    "check_absent",
    "check_size",
    "complete",
    "multipart_place",
    "post_form",
    "receive",
    "redirect_put",
    "resume",
    "stored",
    "upload_target",
]
