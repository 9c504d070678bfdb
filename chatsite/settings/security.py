"""Behind TLS in production: HTTPS-only cookies, HSTS, a redirect to HTTPS (or not, where the
proxy does it), a Content Security Policy; throttles on log-in and sign-up; mail.

With DJANGO_DEBUG=false and DJANGO_HTTPS=true, `manage.py check --deploy` has nothing to say.
The embedded default (`make run` on 127.0.0.1) serves plain HTTP, so DJANGO_HTTPS is off there.
"""
from chatsite.settings.env import env_bool, env_int, env_str

# Set when the site is reached over HTTPS (directly or through a TLS-terminating proxy).
HTTPS = env_bool("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if HTTPS else 0)  # a year
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", HTTPS)
# A proxy that terminates TLS says so in X-Forwarded-Proto; trust it only where one is in front.
if env_bool("DJANGO_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # a load balancer's health check speaks plain HTTP
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# Django 6.0's CSP middleware is not in 5.2: the policy is sent by chatsite.middleware. No
# inline script or style anywhere; the WebSocket goes to this origin ('self' covers ws/wss in
# CSP Level 3 browsers; listed explicitly for the others).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'self'; form-action 'self' https://checkout.stripe.com "
    "https://billing.stripe.com; frame-ancestors 'none'"
)

# Throttles (chatsite/throttle.py).
LOGIN_FAILURES_PER_ACCOUNT = env_int("LOGIN_FAILURES_PER_ACCOUNT", 5)
LOGIN_FAILURES_PER_IP = env_int("LOGIN_FAILURES_PER_IP", 20)
LOGIN_LOCKOUT_S = env_int("LOGIN_LOCKOUT_S", 900)
SIGNUPS_PER_IP = env_int("SIGNUPS_PER_IP", 5)
SIGNUP_WINDOW_S = env_int("SIGNUP_WINDOW_S", 3600)

# Mail: off unless an SMTP server is named. Without it there is no password reset (there is
# nothing to send the link with); staff reset passwords in the admin.
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "chatsite <noreply@localhost>")
MAIL_ENABLED = bool(EMAIL_HOST)
