"""Browser sign-in with an OpenID Connect provider (`auth.login`). What the rest of the
proxy uses is named here; the modules behind it are this package's own business.

- navigation.py: which requests are browser navigations; which `next` targets are local.
- session.py: the signed flow cookie, and the session token the proxy mints. No I/O.
- provider.py: discovery, code exchange, ID token checks, userinfo (I/O through a seam).
- flow.py: the endpoints, and the hook that turns a navigation's 401 into a sign-in.
"""

from .flow import SignIn
from .provider import ProviderHttp

__all__ = ["ProviderHttp", "SignIn"]
